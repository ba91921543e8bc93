"""KL anchor to a frozen reference model (Vikhr-style continued pre-training).

The trained model minimises

    loss = CE + weight * KL(p_model ‖ p_ref)

where p_ref is the next-token distribution of a frozen copy of the original model, run
without gradients on the same micro-batch. The KL is taken per position, in float32, and
averaged over the step's positions where it applies (all ranks, all micro-batches), like the
CE is averaged over the step's targets (train/loss.py).
It pulls the trained model's predictions back towards the original's wherever both can
score the same context, which is what keeps the original language from being forgotten.

Where the KL applies (`anchor.tokens`):

- ``all`` (the model and the reference share one vocabulary: continued pre-training with
  the original tokenizer, or a reference that is the grafted model itself): every
  position whose label is a target (labels != -100). Positions the CE ignores (prompts,
  BOS) are ignored by the anchor too, so both terms judge the same predictions. The
  distributions are compared over the whole vocabulary.

- ``shared`` (the vocabularies differ, e.g. the model went through `lingraft init`): a
  token is *shared* when its new id has an exact counterpart in the reference's
  vocabulary, either from the token map (rows of provenance ``kept``/``special``, which
  copy exactly one old row) or from explicit id ranges that kept their ids
  (``shared_ids``, the case of an extended tokenizer). The reference reads the inputs
  mapped to its own ids, so a position can be scored by both models only if every token
  it attends to is shared: the KL applies where the label is a target AND the document
  prefix up to that position (the whole sample prefix without document masking) holds
  shared tokens only. On replay text of the original language, which the new tokenizer
  writes almost entirely with kept tokens, that is nearly every position; on new-language
  text it is the few positions before the first new token. Both distributions are then
  restricted to the shared tokens and renormalised there: KL(p_model(. | shared) ‖
  p_ref(. | shared)), the only comparison the two vocabularies allow. Each reference id is
  used once (a second new id copying the same old row is left out of the comparison),
  so no probability is counted twice.

The packed format does not record which document came from which source (only per-shard
token counts), so the anchor does not need to know which samples are replay: with
``shared`` the mask finds the positions the reference can score; with ``all`` the KL
applies to every sample, which is Vikhr's setting.

Per backend, the reference is held like the trained model: the local backend keeps it
in the trained weights' dtype on the same device (autocast covers both forwards); FSDP2
shards it with the same `fully_shard` groups and mixed-precision policy; DeepSpeed
ZeRO-3 wraps it in a ZeRO-3 engine without optimizer (parameters partitioned across
ranks and gathered layer by layer in the forward); ZeRO-1/2 keep full parameters on every
rank, so the reference is replicated in the trained weights' dtype there as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lingraft.data_prep.dataset import IGNORE_INDEX as IGNORE
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.train.config import AnchorConfig, TrainConfig, parse_id_ranges
from lingraft.train.model_setup import copies_old_row, token_map_path

log = get_logger(__name__)


# -- the math (pure functions on tensors) ----------------------------------------------------

def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor,
                    model_cols: torch.Tensor | None = None, ref_cols: torch.Tensor | None = None,
                    denominator: float | None = None) -> torch.Tensor:
    """Mean over the positions where `mask` is True of KL(p_model ‖ p_ref), in nats; with
    `denominator`, the sum over those positions divided by it (the step's global count).

    logits (..., V_model) and ref_logits (..., V_ref) share their leading shape with mask.
    With `model_cols`/`ref_cols` (equal-length id lists, pair i = the same token in both
    vocabularies) both distributions are restricted to those tokens and renormalised.
    No masked position gives 0 (not 0/0). Gradients flow into `logits` only.
    """
    if (model_cols is None) != (ref_cols is None):
        raise ValueError("model_cols and ref_cols go together")
    if model_cols is not None:
        logits, ref_logits = logits.index_select(-1, model_cols), ref_logits.index_select(-1, ref_cols)
    elif logits.shape[-1] != ref_logits.shape[-1]:
        raise ValueError(f"vocabularies differ ({logits.shape[-1]} vs {ref_logits.shape[-1]}); give the shared columns")
    log_p = torch.log_softmax(logits[mask].float(), dim=-1)
    log_q = torch.log_softmax(ref_logits[mask].detach().float(), dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    return per_position.sum() / (mask.sum().clamp(min=1) if denominator is None else denominator)


def shared_prefix_mask(is_shared: torch.Tensor, position_ids: torch.Tensor, doc_mask: bool) -> torch.Tensor:
    """(batch, seq) bool: every token from the start of the position's attention span up to
    and including the position itself is shared. The span is the document (position ids
    restart at 0) with document masking, the whole sample without it."""
    unshared = (~is_shared).to(torch.int64)
    seen = unshared.cumsum(dim=-1)
    if not doc_mask:
        return seen == 0
    seq = position_ids.shape[-1]
    index = torch.arange(seq, device=position_ids.device).expand_as(position_ids)
    # Index of the current document's first token (position id 0), carried forward along the row.
    starts = torch.where(position_ids == 0, index, torch.zeros_like(index)).cummax(dim=-1).values
    before = (seen - unshared).gather(-1, starts)   # unshared tokens before the document began
    return seen - before == 0


# -- the shared vocabulary -----------------------------------------------------------------

@dataclass(frozen=True)
class SharedTokens:
    """Which model ids have an exact reference counterpart, and the pairs compared by the KL."""
    to_ref: torch.Tensor        # (model_vocab,) int64: the reference id, -1 where none
    model_cols: torch.Tensor    # (n,) model ids, one per distinct reference id
    ref_cols: torch.Tensor      # (n,) their reference ids

    @classmethod
    def from_pairs(cls, model_ids: torch.Tensor, ref_ids: torch.Tensor, model_vocab: int, ref_vocab: int,
                   setting: str = "anchor") -> "SharedTokens":
        if model_ids.numel() == 0:
            raise LingraftError(f"{setting}: the model and the reference share no token; there is nothing to compare")
        if int(model_ids.max()) >= model_vocab or int(ref_ids.max()) >= ref_vocab:
            raise LingraftError(f"{setting}: a shared id is outside the vocabularies ({model_vocab} model, "
                                f"{ref_vocab} reference ids)")
        to_ref = torch.full((model_vocab,), -1, dtype=torch.int64)
        to_ref[model_ids] = ref_ids
        # One model column per reference id (the lowest model id copying it).
        first: dict[int, int] = {}
        for model_id, ref_id in sorted(zip(model_ids.tolist(), ref_ids.tolist())):
            first.setdefault(ref_id, model_id)
        return cls(to_ref=to_ref, model_cols=torch.tensor(list(first.values()), dtype=torch.int64),
                   ref_cols=torch.tensor(list(first), dtype=torch.int64))

    def to(self, device: torch.device) -> "SharedTokens":
        return SharedTokens(self.to_ref.to(device), self.model_cols.to(device), self.ref_cols.to(device))


def shared_from_token_map(path: Path, model_vocab: int, ref_vocab: int) -> SharedTokens:
    """Rows of provenance kept/special copy exactly one old row: those tokens are shared."""
    from lingraft.vocabulary.token_map import TokenMap
    if not Path(path).is_file():
        raise LingraftError(f"anchor.token_map: {path} not found (tokens=shared needs a token map or shared_ids)")
    tmap = TokenMap.load(path)
    if tmap.new_vocab != model_vocab or tmap.old_vocab != ref_vocab:
        raise LingraftError(f"anchor.token_map: {path} maps {tmap.new_vocab} -> {tmap.old_vocab} tokens, but the "
                            f"model has {model_vocab} and the reference {ref_vocab}")
    return SharedTokens.from_pairs(*token_map_pairs(tmap), model_vocab, ref_vocab)


def token_map_pairs(tmap) -> tuple[torch.Tensor, torch.Tensor]:
    """(new ids, old ids) of the rows that copy exactly one old row (provenance kept/special)."""
    single = (tmap.indptr[1:] - tmap.indptr[:-1]) == 1
    model_ids = torch.nonzero(copies_old_row(tmap) & single).flatten()
    return model_ids, tmap.indices[tmap.indptr[model_ids]]


def shared_from_ranges(spec: str, model_vocab: int, ref_vocab: int, setting: str = "anchor") -> SharedTokens:
    """Ids that kept their id in both vocabularies (an extended tokenizer): identity pairs."""
    ids = torch.unique(torch.cat([torch.arange(lo, hi) for lo, hi in parse_id_ranges(spec)]))
    return SharedTokens.from_pairs(ids, ids, model_vocab, ref_vocab, setting)


# -- the anchor as the loss sees it -----------------------------------------------------------

class Anchor:
    """The frozen reference and the KL term of one run; collects the KL of each micro-batch."""

    def __init__(self, reference: nn.Module, weight: float, shared: SharedTokens | None, doc_mask: bool) -> None:
        self.reference, self.weight, self.shared, self.doc_mask = reference, weight, shared, doc_mask
        self._kls: list[torch.Tensor] = []

    @torch.no_grad()
    def reference_logits(self, batch: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        if self.shared is not None:
            # Unshared ids become 0: only positions before them are compared, and causal
            # attention keeps those positions from seeing the placeholder.
            input_ids = self.shared.to_ref[input_ids].clamp(min=0)
        return self.reference(input_ids=input_ids, use_cache=False, **inputs).logits

    def kl_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["labels"] != IGNORE
        if self.shared is not None:
            mask &= shared_prefix_mask(self.shared.to_ref[batch["input_ids"]] >= 0, batch["position_ids"],
                                       self.doc_mask)
        return mask

    def penalty(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], inputs: dict[str, Any],
                kl_positions: float) -> torch.Tensor:
        """weight * this micro-batch's share of the step's KL (summed here, divided by the step's
        `kl_positions`), added to its CE; the share is kept for `step_metrics`."""
        cols = (self.shared.model_cols, self.shared.ref_cols) if self.shared is not None else (None, None)
        kl = kl_to_reference(logits, self.reference_logits(batch, inputs), self.kl_mask(batch), *cols,
                             denominator=kl_positions)
        self._kls.append(kl.detach())
        return self.weight * kl

    def step_metrics(self, step_loss: float, device: torch.device) -> dict[str, float]:
        """The step's per-position KL over all ranks (a collective), and the CE part of the loss."""
        from lingraft.train.backends.base import global_step_loss
        kls, self._kls = self._kls, []
        kl = global_step_loss(kls, device)
        return {"kl": kl, "ce": step_loss - self.weight * kl}


# -- construction --------------------------------------------------------------------------

def reference_path(cfg: TrainConfig) -> Path:
    return Path(cfg.anchor.reference or cfg.model)


def load_reference(path: Path, device: torch.device, dtype: torch.dtype, attention: str) -> nn.Module:
    """The reference checkpoint, frozen (no parameter requires grad) and in eval mode."""
    from transformers import AutoModelForCausalLM
    if not (path / "config.json").is_file():
        raise LingraftError(f"anchor.reference: {path} is not a Hugging Face checkpoint folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval().to(device)


def shared_tokens(cfg: AnchorConfig, model_dir: Path, model_vocab: int, ref_vocab: int) -> SharedTokens | None:
    if cfg.tokens == "all":
        if model_vocab != ref_vocab:
            raise LingraftError(f"anchor.tokens=all: the model has {model_vocab} tokens, the reference {ref_vocab}; "
                                "use anchor.tokens=shared with a token map or shared_ids")
        return None
    if cfg.shared_ids is not None:
        return shared_from_ranges(cfg.shared_ids, model_vocab, ref_vocab)
    return shared_from_token_map(token_map_path(cfg.token_map, model_dir), model_vocab, ref_vocab)


def build_anchor(cfg: TrainConfig, model_vocab: int, device: torch.device, dtype: torch.dtype, attention: str,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> Anchor | None:
    """The run's anchor, or None when anchor.weight is 0 (no reference is loaded at all).

    `wrap` is the backend's way of holding the reference like the trained model (sharding).
    """
    if cfg.anchor.weight == 0:
        return None
    path = reference_path(cfg)
    reference = load_reference(path, device, dtype, attention)
    shared = shared_tokens(cfg.anchor, Path(cfg.model), model_vocab, reference.config.vocab_size)
    if shared is not None:
        shared = shared.to(device)
        log.info("anchor: %d shared tokens compared (of %d model, %d reference)", shared.model_cols.numel(),
                 model_vocab, reference.config.vocab_size)
    log.info("anchor: KL(p_model || p_ref) x %g, reference %s, tokens=%s", cfg.anchor.weight, path, cfg.anchor.tokens)
    return Anchor(wrap(reference), cfg.anchor.weight, shared, cfg.doc_mask)

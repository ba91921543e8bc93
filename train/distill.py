"""Cross-tokenizer distillation: the original model teaches the grafted one (`distill:`).

The grafted model A is the original model B with a new vocabulary: its new rows are learnt
while the transformer stays frozen (new_rows, embeddings), and then, with the rows in place,
low-rank adapters let the body learn to read them (lora; beside the CE, the KL keeps A's
English where B's is, since there B is the reference itself). B reads each document in its own (old)
tokenisation, A in the new one; wherever both have just read exactly the same bytes
(train/distill_batch.py finds those pairs), A's next-token distribution should be B's:

    loss = ce_weight * CE + weight * KL(p_B(. | shared) ‖ p_A(. | shared))

averaged over the step's aligned pairs (all ranks, all micro-batches), like the CE over its
targets (train/loss.py). ``ce_weight`` 1 puts it beside the cross-entropy, 0 instead of it.

The two distributions are over different vocabularies. They are compared on the tokens
both have (*shared*: the token map's kept/special rows, or explicit id ranges for an
Extended vocabulary, whose old ids are a prefix of the new ones), each restricted to those
tokens and renormalised: "which old token comes next", asked of both models. The direction
is B's as the target (forward KL, as in `lingraft init --method distill`), so A is pulled to
cover every continuation B finds likely; its gradient on the logits is p_A - p_B, a
cross-entropy with B's soft targets. Hidden states are not matched: A's final states at an
aligned pair follow different token histories and need not coincide for the predictions to.

The teacher is held like the anchor's reference (train/anchor.py): frozen, no gradients,
replicated on the local backend and under ZeRO-1/2, its own ZeRO-3 engine under ZeRO-3,
sharded by the same `fully_shard` groups under FSDP2. It runs on every micro-batch of every
rank, pairs or not, so sharded teachers gather their weights in step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.train.anchor import SharedTokens, load_reference, shared_from_ranges, token_map_pairs
from lingraft.train.attention import attention_inputs
from lingraft.train.config import TrainConfig
from lingraft.train.distill_batch import PAIRS, TEACHER_IDS, TEACHER_POSITIONS, ByteTable, TeacherInputs, tokenizer_encode

log = get_logger(__name__)


# -- the math --------------------------------------------------------------------------------

def kl_at_pairs(logits: torch.Tensor, teacher_logits: torch.Tensor, pairs: torch.Tensor, model_cols: torch.Tensor,
                teacher_cols: torch.Tensor, denominator: float) -> torch.Tensor:
    """Sum over `pairs` (batch, n, 2; -1 = none) of KL(p_teacher ‖ p_model) on the shared columns
    (pair k: model id model_cols[k] is teacher id teacher_cols[k]), divided by `denominator`.

    logits (batch, L, V_model) at the pairs' model positions, teacher_logits (batch, L_t, V_teacher)
    at their teacher positions. Gradients flow into `logits` only; no pair gives 0 (not NaN).
    """
    valid = pairs[..., 0] >= 0
    rows = valid.nonzero()[:, 0]
    model = logits[rows, pairs[..., 0][valid]].index_select(-1, model_cols)
    teacher = teacher_logits[rows, pairs[..., 1][valid]].detach().index_select(-1, teacher_cols)
    log_q = torch.log_softmax(model.float(), dim=-1)
    log_p = torch.log_softmax(teacher.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum() / denominator


def chunk_kl_at_pairs(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                      teacher_ids: torch.Tensor, teacher_positions: torch.Tensor, pairs: torch.Tensor,
                      denominator: float) -> torch.Tensor:
    """Sum over chunks of KL(Bernoulli(p_teacher) ‖ Bernoulli(p_model)), divided by `denominator`.

    A chunk is the model's next token where it ends on the teacher's token boundary too: two
    consecutive pairs (i, j), (i + 1, j') of one document. p_model is the model's probability of
    that token (labels[i]) over its whole vocabulary; p_teacher the teacher's probability of
    the same bytes, its tokens j+1..j' read one by one. Matching the two likelihoods (as ALM,
    Minixhofer et al. 2025, does over aligned chunks) reaches what the shared-token KL cannot:
    the rows of new tokens, in the head as well as in the input table. Gradients flow into
    `logits` only; no chunk gives 0.
    """
    chunk = (pairs[:, :-1, 0] >= 0) & (pairs[:, 1:, 0] == pairs[:, :-1, 0] + 1)
    rows, k = chunk.nonzero(as_tuple=True)
    if not rows.numel():
        return logits.sum() * 0.0
    i, j, j_next = pairs[rows, k, 0], pairs[rows, k, 1], pairs[rows, k + 1, 1]
    same_doc = teacher_positions[rows, j_next] - teacher_positions[rows, j] == j_next - j
    rows, i, j, j_next = rows[same_doc], i[same_doc], j[same_doc], j_next[same_doc]
    model = logits[rows, i].float()
    log_q = model.gather(-1, labels[rows, i].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(model, dim=-1)
    with torch.no_grad():
        teacher = teacher_logits.float()
        step_logp = teacher[:, :-1].gather(-1, teacher_ids[:, 1:].unsqueeze(-1)).squeeze(-1) \
            - torch.logsumexp(teacher[:, :-1], dim=-1)           # log p(token t+1 | tokens <= t)
        before = torch.nn.functional.pad(step_logp.cumsum(-1), (1, 0))
        log_p = (before[rows, j_next] - before[rows, j]).clamp(max=0.0)
    p = log_p.exp()
    log_1mq, log_1mp = _log1mexp(log_q), _log1mexp(log_p)
    kl = p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)
    return kl.sum() / denominator


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Mächler 2012), floored away from -inf."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# -- the objective as the loss sees it ---------------------------------------------------------

@dataclass(frozen=True)
class DistillWeights:
    kl: float        # the shared-token KL
    ce: float        # the plain cross-entropy
    chunk: float     # the chunk-likelihood KL


class Distiller:
    """The frozen teacher and the loss terms of one run; collects each micro-batch's terms."""

    def __init__(self, teacher: nn.Module, weights: DistillWeights, shared: SharedTokens, attention: str,
                 doc_mask: bool) -> None:
        self.teacher, self.weights, self.shared = teacher, weights, shared
        self.attention, self.doc_mask = attention, doc_mask
        self._terms: dict[str, list[torch.Tensor]] = {"distill_kl": [], "distill_chunk_kl": [], "ce": []}

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = attention_inputs(batch[TEACHER_POSITIONS], self.attention, self.doc_mask)
        return self.teacher(input_ids=batch[TEACHER_IDS], use_cache=False, **inputs).logits

    def loss(self, ce: torch.Tensor, logits: torch.Tensor, batch: dict[str, torch.Tensor],
             pairs: float) -> torch.Tensor:
        """The weighted sum of this micro-batch's CE share and its shares of the step's KL terms
        (summed here, divided by the step's `pairs`); every share is kept for `step_metrics`."""
        w = self.weights
        teacher = self.teacher_logits(batch)
        kl = kl_at_pairs(logits, teacher, batch[PAIRS], self.shared.model_cols, self.shared.ref_cols, pairs)
        chunk = chunk_kl_at_pairs(logits, batch["labels"], teacher, batch[TEACHER_IDS], batch[TEACHER_POSITIONS],
                                  batch[PAIRS], pairs) if w.chunk else torch.zeros((), device=logits.device)
        for name, term in (("distill_kl", kl), ("distill_chunk_kl", chunk), ("ce", ce)):
            self._terms[name].append(term.detach())
        # A weight of 0 leaves its term out of the graph (0 * term would still backpropagate through it).
        return sum((weight * term for weight, term in ((w.kl, kl), (w.chunk, chunk), (w.ce, ce)) if weight),
                   torch.zeros((), device=logits.device))

    def step_metrics(self, pairs: float, device: torch.device) -> dict[str, float]:
        """The step's per-pair KL terms and per-target CE over all ranks (collectives), and its pair count."""
        from lingraft.train.backends.base import global_step_loss
        terms, self._terms = self._terms, {name: [] for name in self._terms}
        return {**{name: global_step_loss(values, device) for name, values in terms.items()}, "distill_pairs": pairs}


# -- the teacher ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherSpec:
    model: Path
    tokenizer: str


def resolve_teacher(cfg: TrainConfig) -> TeacherSpec:
    """The teacher's folder and tokenizer: as configured, else the source `lingraft init` recorded."""
    from lingraft.manifest import ManifestError, read_manifest
    given, old_tokenizer = cfg.distill.teacher, None
    if given is None:
        try:
            manifest = read_manifest(cfg.model)
        except ManifestError:
            manifest = {}
        source = (manifest.get("inputs", {}).get("model") or {}).get("path") if manifest.get("stage") == "init" else None
        if not source:
            raise LingraftError(f"distillation needs a teacher (the original model) but "
                                f"distill.teacher is not set and {cfg.model} has no `lingraft init` manifest naming "
                                "its source model; set distill.teacher")
        given, old_tokenizer = Path(source), manifest.get("params", {}).get("old_tokenizer")
    if not (Path(given) / "config.json").is_file():
        raise LingraftError(f"distill.teacher: {given} is not a Hugging Face checkpoint folder (no config.json)")
    return TeacherSpec(Path(given), cfg.distill.teacher_tokenizer or old_tokenizer or str(given))


def _load_tokenizer(spec: str | Path, setting: str):
    from lingraft.vocabulary.loading import load_tokenizer
    try:
        return load_tokenizer(spec)
    except (LingraftError, OSError, ValueError) as exc:
        raise LingraftError(f"{setting}: cannot load a tokenizer from {spec} ({exc})") from None


def teacher_inputs(cfg: TrainConfig) -> TeacherInputs | None:
    """The data stream's teacher tokenisation, or None without distillation. Every bad input
    (no teacher, no tokenizer, a tokenizer larger than its model) fails here, before any work."""
    if not cfg.distill.enabled:
        return None
    from transformers import AutoConfig

    from lingraft.vocabulary.token_alignment import token_bytes
    spec = resolve_teacher(cfg)
    tables = {}
    for setting, tok_spec, folder in (("model", cfg.model, cfg.model), ("distill.teacher_tokenizer", spec.tokenizer,
                                                                        spec.model)):
        tok = _load_tokenizer(tok_spec, setting)
        rows = AutoConfig.from_pretrained(folder).vocab_size
        if len(tok) > rows:
            raise LingraftError(f"{setting}: the tokenizer {tok_spec} has {len(tok)} tokens but {folder} has only "
                                f"{rows} embedding rows")
        tables[setting] = (ByteTable.of(token_bytes(tok)), tok)
    (model_table, _), (teacher_table, teacher_tok) = tables.values()
    return TeacherInputs(model_table, teacher_table, tokenizer_encode(teacher_tok))


def shared_columns(cfg: TrainConfig, model_vocab: int, teacher_vocab: int) -> SharedTokens:
    """Tokens the two vocabularies share: distill.shared_ids, else the token map's kept/special rows."""
    if cfg.distill.shared_ids is not None:
        return shared_from_ranges(cfg.distill.shared_ids, model_vocab, teacher_vocab, setting="distill.shared_ids")
    from lingraft.train.model_setup import token_map_path
    from lingraft.vocabulary.token_map import TokenMap
    path = token_map_path(cfg.distill.token_map, Path(cfg.model))
    if not path.is_file():
        raise LingraftError(f"distill.token_map: {path} not found (give the token map or distill.shared_ids)")
    # Padded tables (init pads to a multiple of 64) have more rows than the map has tokens.
    return SharedTokens.from_pairs(*token_map_pairs(TokenMap.load(path)), model_vocab, teacher_vocab,
                                   setting=f"distill.token_map ({path})")


def build_distiller(cfg: TrainConfig, model_vocab: int, device: torch.device, dtype: torch.dtype, attention: str,
                    wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> Distiller | None:
    """The run's distillation, or None when it is off (no teacher is loaded at all).

    `wrap` is the backend's way of holding the teacher like the trained model (sharding).
    """
    if not cfg.distill.enabled:
        return None
    spec = resolve_teacher(cfg)
    teacher = load_reference(spec.model, device, dtype, attention)
    shared = shared_columns(cfg, model_vocab, teacher.config.vocab_size).to(device)
    log.info("distill: KL(p_teacher || p_model) x %g + chunk likelihood KL x %g + CE x %g, teacher %s "
             "(tokenizer %s), %d shared tokens", cfg.distill.weight, cfg.distill.chunk_weight, cfg.distill.ce_weight,
             spec.model, spec.tokenizer, shared.model_cols.numel())
    return Distiller(wrap(teacher), DistillWeights(cfg.distill.weight, cfg.distill.ce_weight, cfg.distill.chunk_weight),
                     shared, attention, cfg.doc_mask)

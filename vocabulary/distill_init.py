"""`lingraft init --method distill`: the mean map's rows refined by the original model.

1. Passages of the corpus are tokenised both ways and aligned (token_alignment).
2. The new *input* rows are distilled: the frozen body reading the new tokenisation must
   predict, at every aligned position, what the original model predicts reading the old one.
3. The new *output* rows are fitted by cross-entropy on the body's final states over the new
   tokenisation (distill_math.fit_output_rows). A tied checkpoint gets its head untied: rows
   trained as inputs make poor outputs, and one table cannot be both.

The token map (mean of pieces) stays the provenance record: it is where every row started,
and LEP conversion fits its linear map on T-mapped rows of B and I, which does not depend on
how A's rows were refined afterwards.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from lingraft.compute import resolve_device_dtype
from lingraft.data_prep.readers import iter_texts
from lingraft.evaluation.bpc import start_token_id
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.vocabulary.distill_math import (
    FitData,
    HeadFeatures,
    HeadFit,
    Passage,
    RowSplit,
    TeacherStates,
    distillation_loss,
    fit_output_rows,
    pad_batch,
    prepare_fit,
    unit_direction,
)
from lingraft.vocabulary.token_alignment import aligned_positions, byte_lengths
from lingraft.vocabulary.token_matching import OldSegmenter, Vocabulary, describe_vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from lingraft.vocabulary.init_config import InitConfig

log = get_logger(__name__)

# Windows read from the corpus per window kept: enough for an even sample of a mixed corpus.
SCAN_FACTOR = 50
# Held-out windows per window fitted on: they choose the head fit's epoch (and judge its incumbent).
HELD_OUT_SHARE = 0.1


@dataclass(frozen=True)
class DistillRuntime:
    """Where the original model's passes run and in what dtype; learnt rows stay fp32 either way."""
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def resolve(cls, device: str, precision: str) -> "DistillRuntime":
        """auto: the first GPU when one is visible; bf16 on GPU and fp32 on CPU unless told otherwise."""
        return cls(*resolve_device_dtype(device, precision))

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def autocast(self):
        # fp32 weights are cast per matmul: one copy of the model serves as teacher and body
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


@dataclass
class DistilledTables:
    input: torch.Tensor               # (rows, d) the new input table
    output: torch.Tensor              # (rows, d) the new head
    stats: dict[str, Any]
    head_map: dict[str, torch.Tensor] | None   # the fitted map that made the learnt head rows
    learnt_ids: torch.Tensor          # the ids of the learnt rows, in the map's order


def text_windows(texts: Iterator[str], chars: int) -> Iterator[str]:
    """Consecutive windows of about `chars` characters, cut at whitespace, leading space removed."""
    for text in texts:
        start = 0
        while start < len(text):
            end = min(len(text), start + chars)
            if end < len(text):
                cut = text.rfind(" ", start + chars // 2, end)
                end = cut if cut > start else end
            window = text[start:end].strip()
            if window:
                yield window
            start = end


def repeated_half(window: str) -> str:
    """The window's first half (cut at whitespace), a blank line, and that half again: the same
    length as the window, and the second half is a copy that B predicts almost surely."""
    cut = window.rfind(" ", 0, len(window) // 2)
    half = window[:cut if cut > 0 else len(window) // 2].strip()
    return f"{half}\n\n{half}"


@dataclass(frozen=True)
class WindowDraw:
    fit: list[str]        # what the fits read
    held_out: list[str]   # further windows no fit reads: they judge the head fit's epochs and incumbent


@dataclass(frozen=True)
class WindowSample:
    """Which corpus windows the original (or the adapted) model reads."""
    corpus: list[str]   # files, folders or hub dataset ids (iter_texts reads each)
    field: str
    count: int          # windows kept for the fits
    chars: int          # characters per window
    copy_share: float   # share of windows whose first half is repeated (`repeated_half`)
    seed: int
    held_out_share: float = HELD_OUT_SHARE   # held-out windows, as a share of `count`

    def draw(self) -> WindowDraw:
        """A seeded uniform sample of the first SCAN_FACTOR × count windows (a cluster-sized corpus
        is read only that far, never whole): `count` windows to fit on, then held-out ones, the
        first `copy_share` of each repeated. While the corpus has `count` + held windows, the fit
        windows do not depend on the held-out share.

        The held-out windows are whole windows: positions held out of windows the fit reads share
        their words, so they favour rows fitted on those windows (BENCHMARKS.md, "The head fit's
        guard and schedule"). A smaller corpus keeps the held-out windows and fits on fewer."""
        windows = list(islice((w for path in self.corpus for w in text_windows(iter_texts(path, self.field),
                                                                               self.chars)),
                              SCAN_FACTOR * self.count))
        random.Random(self.seed).shuffle(windows)
        if len(windows) < 2:
            raise LingraftError(f"corpus: {', '.join(self.corpus)} holds {len(windows)} window(s) of "
                                f"{self.chars} characters; the head fit needs at least 2 (one is held out)")
        held = min(max(1, round(self.held_out_share * self.count)), len(windows) - 1)
        fit = min(self.count, len(windows) - held)
        if fit < self.count:
            log.warning("corpus: %d windows of %d characters, fewer than the %d to fit on plus %d held out: "
                        "fitting on %d", len(windows), self.chars, self.count, held, fit)

        def with_copies(part: list[str]) -> list[str]:
            copies = round(self.copy_share * len(part))
            return [repeated_half(w) for w in part[:copies]] + part[copies:]
        return WindowDraw(fit=with_copies(windows[:fit]), held_out=with_copies(windows[fit:fit + held]))


@dataclass(frozen=True)
class HeadFitSettings:
    """How the head map is fitted (init's `head_fit_*` settings, or fit-head's)."""
    epochs: int
    lr: float
    batch_size: int        # positions per Adam step
    state_batch_size: int  # windows per forward pass while collecting states
    seed: int
    warmup_epochs: float   # the learning rate rises linearly over these, then decays on a cosine


def window_sample(cfg: "InitConfig") -> WindowSample:
    return WindowSample([str(p) for p in cfg.corpus], cfg.corpus_field, cfg.distill_passages,
                        cfg.distill_passage_chars, cfg.distill_copy_share, cfg.seed)


def head_fit_settings(cfg: "InitConfig") -> HeadFitSettings:
    return HeadFitSettings(cfg.head_fit_epochs, cfg.head_fit_lr, cfg.head_fit_batch_size, cfg.distill_batch_size,
                           cfg.seed, cfg.head_fit_warmup_epochs)


def build_passages(windows: list[str], old_tok: "PreTrainedTokenizerFast", new_tok: "PreTrainedTokenizerFast",
                   vocabs: tuple[Vocabulary, Vocabulary], start_ids: tuple[int, int]) -> list[Passage]:
    """The windows tokenised and aligned both ways."""
    old_len, new_len = byte_lengths(vocabs[0]), byte_lengths(vocabs[1])
    old_start, new_start = start_ids
    old_len[old_start] = new_len[new_start] = 0        # read like a document start, as bpc scores it
    old_enc = old_tok(windows, add_special_tokens=False)["input_ids"]
    new_enc = new_tok(windows, add_special_tokens=False)["input_ids"]
    passages = []
    for old_ids, new_ids in zip(old_enc, new_enc):
        old = np.array([old_start, *old_ids], dtype=np.int64)
        new = np.array([new_start, *new_ids], dtype=np.int64)
        old_pos, new_pos = aligned_positions(old, new, old_len, new_len)
        # the last aligned pair is the end of the text: nothing follows it to predict
        if old_pos.numel() > 1:
            passages.append(Passage(torch.from_numpy(old), torch.from_numpy(new), old_pos[:-1], new_pos[:-1]))
    return passages



def trainable_rows(provenance: list[str]) -> RowSplit:
    """Rows that are not an old token kept as it was (or a special token) are learnt."""
    return RowSplit.from_mask(torch.tensor([p not in ("kept", "special") for p in provenance]))


def load_frozen(folder: Path, runtime: DistillRuntime, trust_remote_code: bool) -> "PreTrainedModel":
    """The model in fp32 (autocast casts per matmul) on the runtime's device, frozen, in eval mode."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code).to(runtime.device)
    model.requires_grad_(False)
    return model.eval()


def _body(model: "PreTrainedModel", runtime: DistillRuntime):
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model

    def body(embeds: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return inner(inputs_embeds=embeds, use_cache=False).last_hidden_state
    return body


def distill_input_rows(cfg: "InitConfig", model: "PreTrainedModel", runtime: DistillRuntime, table: torch.Tensor,
                       head: torch.Tensor, split: RowSplit, passages: list[Passage],
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    body = _body(model, runtime)
    teacher = TeacherStates(body, model.get_input_embeddings().weight.detach(), passages,
                            int(cfg.distill_teacher_cache_gb * 2**30))
    start = time.perf_counter()
    rows = torch.nn.Parameter(table[split.ids].clone())
    optim = torch.optim.Adam([rows], lr=cfg.distill_lr)
    order = random.Random(cfg.seed + 1)
    first = last = math.nan
    positions = 0
    per_step = min(cfg.distill_batch_size, len(passages))
    with progress(total=cfg.distill_steps, desc="distil input rows", unit="step") as bar:
        for step in range(cfg.distill_steps):
            chosen = order.sample(range(len(passages)), per_step)
            with runtime.autocast():
                loss, count = distillation_loss(body, head, table, rows, split, [passages[i] for i in chosen],
                                                teacher(chosen))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            last, positions = loss.item(), positions + count
            first = last if step == 0 else first
            bar.update(1)
            bar.set_postfix(kl=f"{last:.3f}")
    seconds = time.perf_counter() - start
    log.info("input rows: KL %.3f -> %.3f nats over %d steps (%.1f aligned positions/s, %s on %s; the teacher "
             "read %d passages for %d passage reads, %.0f MB of its states kept)", first, last, cfg.distill_steps,
             positions / max(seconds, 1e-9), runtime.dtype_name, runtime.device, teacher.passes, teacher.reads,
             teacher.kept_bytes / 2**20)
    out = table.clone()
    out[split.ids] = rows.detach().to(table.dtype)
    return out, {"kl_first": round(first, 4), "kl_last": round(last, 4), "steps": cfg.distill_steps,
                 "aligned_positions": positions, "teacher_passes": teacher.passes,
                 "teacher_states_kept_mb": round(teacher.kept_bytes / 2**20, 1), "seconds": round(seconds, 1)}


@torch.no_grad()
def collect_states(model: "PreTrainedModel", runtime: DistillRuntime, table: torch.Tensor,
                   sequences: list[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The body's final states (fp32) over every id sequence (start token first), and each next token."""
    body = _body(model, runtime)
    hidden, targets = [], []
    for start in progress(range(0, len(sequences), batch_size), desc="states for the head fit", unit="batch"):
        batch = sequences[start:start + batch_size]
        states = body(torch.nn.functional.embedding(pad_batch(batch, device=table.device), table))
        for b, ids in enumerate(batch):
            hidden.append(states[b, :ids.numel() - 1].float())
            targets.append(ids[1:])
    return torch.cat(hidden), torch.cat(targets).to(table.device)


def first_pieces(split: RowSplit, old_tok: "PreTrainedTokenizerFast", vocabs: tuple[Vocabulary, Vocabulary],
                 ) -> torch.Tensor:
    """The old id of each learnt token's first piece (the old tokenizer's model on its bytes)."""
    old_vocab, new_vocab = vocabs
    segment = OldSegmenter(old_tok, old_vocab)
    first = []
    for i in split.ids.tolist():
        pieces = segment(new_vocab.piece_bytes.get(i, b""))
        first.append(pieces[0] if pieces else -1)
    return torch.tensor(first, dtype=torch.int64)


def token_sequences(tok: "PreTrainedTokenizerFast", windows: list[str]) -> list[torch.Tensor]:
    """Each window in `tok`'s tokenisation, start token first (read like a document start, as bpc scores it)."""
    begin = start_token_id(tok)
    return [torch.tensor([begin, *ids], dtype=torch.int64)
            for ids in tok(windows, add_special_tokens=False)["input_ids"]]


def fit_head_rows(settings: HeadFitSettings, model: "PreTrainedModel", runtime: DistillRuntime,
                  table: torch.Tensor, head: torch.Tensor, old_head: torch.Tensor, first: torch.Tensor,
                  mean_rows: torch.Tensor, split: RowSplit, sequences: list[torch.Tensor],
                  held_out: list[torch.Tensor], incumbent: torch.Tensor | None = None,
                  start_map: dict[str, torch.Tensor] | None = None) -> tuple[HeadFit, dict[str, Any]]:
    """New head rows for `split`'s learnt tokens (n, d), fitted on the body's states over
    `sequences` read through `table` and judged on its states over `held_out`. `head` supplies
    the frozen rows; `old_head` is the original head, which `first` (each token's first old
    piece) indexes; `mean_rows` are the tokens' mean-of-pieces rows. `incumbent` rows stay
    unless an epoch beats them; `start_map` is a fitted map to start from (a warm start)."""
    start = time.perf_counter()
    hidden, targets = collect_states(model, runtime, table, sequences, settings.state_batch_size)
    data: FitData = prepare_fit(hidden, targets, head, split)
    held_data: FitData = prepare_fit(*collect_states(model, runtime, table, held_out, settings.state_batch_size),
                                     head, split)
    # a token with no old segmentation (an added token) starts from its mean row instead
    first_rows = torch.where((first >= 0).unsqueeze(1), old_head[first.clamp(min=0)], mean_rows)
    features = HeadFeatures(first=first_rows, mean=mean_rows, unit=unit_direction(hidden), input=table[split.ids])
    seen = torch.unique(data.target_local[data.target_local >= 0]).numel()
    curve: list[tuple[float, float]] = []
    with progress(total=settings.epochs, desc="fit head rows", unit="epoch") as bar:
        def on_epoch(epoch: int, loss: float, held: float) -> None:
            curve.append((round(loss, 4), round(held, 4)))
            bar.update(1)
            bar.set_postfix(held_out_ce=f"{held:.3f}")
        fit = fit_output_rows(data, held_data, features, settings.epochs, settings.lr, settings.batch_size,
                              settings.seed, on_epoch=on_epoch, incumbent=incumbent, autocast=runtime.autocast,
                              start_map=start_map, warmup_epochs=settings.warmup_epochs)
    seconds = time.perf_counter() - start
    held_positions = int(held_data.hidden.shape[0])
    log.info("head rows: (train, held-out) cross-entropy by epoch %s over %d positions (%d held out, in %d "
             "windows), held-out %.4f at the start; %d of %d learnt rows occur as targets (%.1f s)", curve,
             data.hidden.shape[0], held_positions, len(held_out), fit.held_out_start, seen, split.ids.numel(),
             seconds)
    return fit, {"cross_entropy_by_epoch": curve, "held_out_start": round(fit.held_out_start, 4),
                      "held_out_best": round(fit.held_out_best, 4), "best_epoch": fit.best_epoch,
                      "positions": int(data.hidden.shape[0]), "held_out_positions": held_positions,
                      "held_out_windows": len(held_out), "rows_seen_as_target": int(seen),
                      "rows_never_seen": int(split.ids.numel() - seen), "seconds": round(seconds, 1)}


def distill_tables(cfg: "InitConfig", source: Path, input_table: torch.Tensor, head_table: torch.Tensor,
                   provenance: list[str], old_tok: "PreTrainedTokenizerFast",
                   new_tok: "PreTrainedTokenizerFast") -> DistilledTables:
    """Refine the mean-initialised tables with the original model at `source` (see module doc)."""
    rows = len(new_tok)
    split = trainable_rows(provenance)
    vocabs = (describe_vocabulary(old_tok), describe_vocabulary(new_tok))   # described once, used twice
    draw = window_sample(cfg).draw()
    passages = build_passages(draw.fit, old_tok, new_tok, vocabs,
                              (start_token_id(old_tok), start_token_id(new_tok)))
    aligned = sum(p.new_pos.numel() for p in passages)
    log.info("distillation corpus: %d passages, %d new tokens, %d aligned positions, %d learnt rows",
             len(passages), sum(p.new_ids.numel() for p in passages), aligned, split.ids.numel())
    runtime = DistillRuntime.resolve(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model = load_frozen(source, runtime, cfg.trust_remote_code)
    # The original head scores B's vocabulary; the new vocabulary's frozen rows are those same rows.
    old_head = model.get_output_embeddings().weight.detach()
    table = input_table[:rows].to(runtime.device, torch.float32)
    head = head_table[:rows].to(runtime.device, torch.float32)
    split = split.to(runtime.device)
    stats: dict[str, Any] = {"passages": len(passages), "aligned_positions": aligned,
                             "learnt_rows": int(split.ids.numel()), "device": str(runtime.device),
                             "precision": runtime.dtype_name}
    if cfg.distill_steps:
        table, stats["input"] = distill_input_rows(cfg, model, runtime, table, old_head, split, passages)
    first = first_pieces(split, old_tok, vocabs).to(runtime.device)
    fit, stats["output"] = fit_head_rows(head_fit_settings(cfg), model, runtime, table, head, old_head, first,
                                         head[split.ids], split, [p.new_ids for p in passages],
                                         token_sequences(new_tok, draw.held_out))
    head = head.clone()
    head[split.ids] = fit.rows.to(head.dtype)
    del model
    return DistilledTables(input=_restore(input_table, table.cpu()), output=_restore(head_table, head.cpu()),
                           stats=stats, head_map=fit.state, learnt_ids=split.ids.cpu())


def _restore(padded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`rows` written over the first rows of `padded` (padding rows unchanged), in its dtype."""
    out = padded.clone()
    out[:rows.shape[0]] = rows.to(padded.dtype)
    return out

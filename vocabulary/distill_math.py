"""The math of distilled initialisation: new rows learnt from what the original model does.

Input and output rows are different problems, solved separately:

* **Input rows** (token distillation, after AweDist): the original model B reads a passage in
  its own tokenisation; the same frozen body reads it in the new one, through the new input
  rows. Wherever both have just finished reading the same text (aligned positions), the new
  model's next-token distribution over B's vocabulary, through B's own head, should equal B's.
  Only the new input rows receive gradients: ``KL(p_B || p_new)``, averaged over aligned
  positions.
* **Output rows**: with the body's final hidden states h fixed, the next-token cross-entropy
  of the new vocabulary is convex in the new head rows. The frozen rows' part of every softmax
  is a constant per position (its log-sum-exp), computed once, so each step costs only
  ``h @ W_newᵀ``. Tokens that never occur as a target are only pushed down wherever they take
  probability mass, so they cannot steal mass from the tokens that do occur.

Everything here is pure tensor code on callables; files and tokenizers live in distill_init.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Mapping, Sequence

import torch
import torch.nn.functional as F

from lingraft.train.optim import lr_factor   # the trainer's warmup-then-cosine factor, here decaying to zero

# The frozen body: input embeddings (B, L, d) -> final (normalised) hidden states (B, L, d).
Body = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Passage:
    old_ids: torch.Tensor   # (L_old,) the original tokenisation, start token first
    new_ids: torch.Tensor   # (L_new,) the new tokenisation, start token first
    old_pos: torch.Tensor   # aligned indices into old_ids ...
    new_pos: torch.Tensor   # ... and the matching indices into new_ids


@dataclass(frozen=True)
class RowSplit:
    """Which rows of a new table are learnt (`trainable`) and where each id sits among them."""
    trainable: torch.Tensor   # (vocab,) bool
    local: torch.Tensor       # (vocab,) index among the trainable rows, -1 for frozen ones

    @classmethod
    def from_mask(cls, trainable: torch.Tensor) -> "RowSplit":
        local = torch.full(trainable.shape, -1, dtype=torch.int64)
        local[trainable] = torch.arange(int(trainable.sum()))
        return cls(trainable=trainable, local=local)

    @property
    def ids(self) -> torch.Tensor:
        return torch.nonzero(self.trainable).flatten()

    def to(self, device: torch.device) -> "RowSplit":
        return RowSplit(trainable=self.trainable.to(device), local=self.local.to(device))


def pad_batch(sequences: Sequence[torch.Tensor], pad: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """Right-padded (B, L) ids: a causal model's states before the padding do not see it."""
    out = torch.full((len(sequences), max(s.numel() for s in sequences)), pad, dtype=torch.int64)
    for row, seq in enumerate(sequences):
        out[row, :seq.numel()] = seq
    return out if device is None else out.to(device)


def gather_positions(states: torch.Tensor, positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of `states` (B, L, d) at each sequence's positions, concatenated: (sum n_b, d)."""
    return torch.cat([states[b, pos] for b, pos in enumerate(positions)])


def lookup(table: torch.Tensor, rows: torch.Tensor, split: RowSplit, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of `ids`: learnt `rows` for trainable ids, `table` (constant) for the others."""
    local = split.local[ids]
    fixed = F.embedding(ids, table)
    learnt = F.embedding(local.clamp(min=0), rows)
    return torch.where((local >= 0).unsqueeze(-1), learnt, fixed)


class TeacherStates:
    """B's final states at each passage's aligned positions, (n_i, d) each, kept after first use.

    B and its tokenisation are fixed, so a passage read again needs no second teacher pass: that
    pass, over the old tokenisation (about twice the new one's tokens), was half of each step's
    compute. Past `max_bytes` of kept states, further passages are recomputed at every read.
    """

    def __init__(self, body: Body, teacher_table: torch.Tensor, passages: Sequence[Passage], max_bytes: int) -> None:
        self.body, self.teacher_table, self.passages, self.max_bytes = body, teacher_table, passages, max_bytes
        self.kept: dict[int, torch.Tensor] = {}
        self.kept_bytes = 0
        self.passes = 0    # passages the teacher has read
        self.reads = 0     # passages asked for

    @torch.no_grad()
    def __call__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        self.reads += len(indices)
        missing = [i for i in indices if i not in self.kept]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            ids = pad_batch([self.passages[i].old_ids for i in missing], device=self.teacher_table.device)
            out = self.body(F.embedding(ids, self.teacher_table))
            fresh = {i: out[b, self.passages[i].old_pos] for b, i in enumerate(missing)}
            self.passes += len(missing)
        for i, state in fresh.items():
            size = state.numel() * state.element_size()
            if self.kept_bytes + size <= self.max_bytes:
                self.kept[i], self.kept_bytes = state, self.kept_bytes + size
        return [self.kept[i] if i in self.kept else fresh[i] for i in indices]


def distillation_loss(body: Body, head: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, split: RowSplit,
                      batch: Sequence[Passage], teacher: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``KL(p_B || p_new)`` over B's vocabulary at the aligned positions of `batch`, and their count;
    `teacher` holds B's states at each passage's aligned positions (`TeacherStates`)."""
    with torch.no_grad():
        target = F.log_softmax(torch.cat(list(teacher)) @ head.T, dim=-1)
    student = body(lookup(table, rows, split, pad_batch([p.new_ids for p in batch], device=table.device)))
    logits = gather_positions(student, [p.new_pos for p in batch]) @ head.T
    # Under bf16 autocast both logit matrices come out bf16 (the head projection is a fifth of the
    # FLOPs); the softmaxes and the KL, which sum 49k terms, run in fp32 all the same.
    loss = F.kl_div(F.log_softmax(logits.float(), dim=-1), target.float(), log_target=True, reduction="batchmean")
    return loss, target.shape[0]


@dataclass(frozen=True)
class FitData:
    """Fixed hidden states and their next-token targets, with the frozen rows' part precomputed."""
    hidden: torch.Tensor          # (N, d)
    target_local: torch.Tensor    # (N,) index among the trainable rows, -1 when the target is frozen
    frozen_lse: torch.Tensor      # (N,) log-sum-exp of the frozen rows' logits
    frozen_target: torch.Tensor   # (N,) the frozen target's logit (unused where the target is trainable)


def prepare_fit(hidden: torch.Tensor, targets: torch.Tensor, head: torch.Tensor, split: RowSplit,
                chunk: int = 4096) -> FitData:
    frozen_ids = torch.nonzero(~split.trainable).flatten()
    frozen = head[frozen_ids]
    lse, target_logit = [], []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        lse.append(torch.logsumexp(h @ frozen.T, dim=-1))
        target_logit.append((h * head[t]).sum(-1))
    return FitData(hidden=hidden, target_local=split.local[targets], frozen_lse=torch.cat(lse),
                   frozen_target=torch.cat(target_logit))


def fit_loss(data: FitData, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions `index`, the frozen rows held constant."""
    h, local = data.hidden[index], data.target_local[index]
    # under autocast the product comes out bf16; the log-sum-exp over ~10k rows is taken in fp32
    logits = (h @ rows.T).float()
    lse = torch.logaddexp(data.frozen_lse[index], torch.logsumexp(logits, dim=-1))
    learnt = logits.gather(1, local.clamp(min=0).unsqueeze(1)).squeeze(1)
    target = torch.where(local >= 0, learnt, data.frozen_target[index])
    return (lse - target).mean()


@torch.no_grad()
def mean_fit_loss(data: FitData, rows: torch.Tensor, chunk: int = 4096) -> float:
    """`fit_loss` over every position of `data`, a chunk of positions at a time (the logits of
    all of them at once would be positions × learnt rows)."""
    total = 0.0
    for index in torch.arange(data.hidden.shape[0], device=data.hidden.device).split(chunk):
        total += float(fit_loss(data, rows, index)) * index.numel()
    return total / max(data.hidden.shape[0], 1)


@dataclass(frozen=True)
class HeadFeatures:
    """What is known about each learnt token before fitting, as rows in B's head space."""
    first: torch.Tensor   # (n, d) B's head row of the token's first old piece
    mean: torch.Tensor    # (n, d) the mean of its pieces' rows (the token map applied to the head)
    unit: torch.Tensor    # (d,) a direction with h·unit ≈ 1 on the fit states: turns a scalar into a logit offset
    input: torch.Tensor | None = None   # (n, d) the token's own input row: lets copying (attention moving a
    #                                     token's embedding forward) find the token's output row


def unit_direction(hidden: torch.Tensor) -> torch.Tensor:
    """Least-squares v with ``hidden @ v ≈ 1``: adding ``c·v`` to a row adds about c to its logit."""
    ones = torch.ones(hidden.shape[0], 1, dtype=hidden.dtype, device=hidden.device)
    return torch.linalg.lstsq(hidden, ones).solution.squeeze(1)


class HeadMap(torch.nn.Module):
    """Learnt head rows ``first·A + mean·M + input·C + u + offset_t·unit``.

    The two d×d maps and u are shared by every new token, so the few hundred thousand
    parameters are fitted from tens of thousands of positions and carry over to tokens the
    corpus never showed; the per-token offset is the only free parameter per token (a
    log-prior: new tokens absorb their first piece's continuations, so their logit needs
    its own level). Starts at the first-piece rows (A = I, M = C = 0, u = 0, offset = 0).
    """

    def __init__(self, features: HeadFeatures) -> None:
        super().__init__()
        d, device = features.first.shape[1], features.first.device
        self.features = features
        self.first_map = torch.nn.Parameter(torch.eye(d, device=device))
        self.mean_map = torch.nn.Parameter(torch.zeros(d, d, device=device))
        self.input_map = torch.nn.Parameter(torch.zeros(d, d, device=device)) if features.input is not None else None
        self.shift = torch.nn.Parameter(torch.zeros(d, device=device))
        self.offset = torch.nn.Parameter(torch.zeros(features.first.shape[0], device=device))

    def rows(self) -> torch.Tensor:
        f = self.features
        rows = f.first @ self.first_map + f.mean @ self.mean_map + self.shift + self.offset[:, None] * f.unit
        return rows if self.input_map is None else rows + f.input @ self.input_map

    def penalty(self) -> torch.Tensor:
        eye = torch.eye(self.first_map.shape[0], device=self.first_map.device)
        maps = (self.first_map - eye).pow(2).sum() + self.mean_map.pow(2).sum() + self.offset.pow(2).mean()
        return maps if self.input_map is None else maps + self.input_map.pow(2).sum()


@dataclass(frozen=True)
class HeadFit:
    rows: torch.Tensor        # (n, d) the rows with the lowest held-out cross-entropy
    held_out_start: float     # held-out cross-entropy of the starting rows (the incumbent, else the starting map)
    held_out_best: float      # ... of `rows`
    best_epoch: int           # 0: no epoch beat the starting rows, which are returned
    state: dict[str, torch.Tensor] | None   # the map's parameters that give `rows`; None when `rows` is the incumbent


def fit_output_rows(data: FitData, held_out: FitData, features: HeadFeatures, epochs: int, lr: float,
                    batch_size: int, seed: int, weight_decay: float = 1e-3,
                    on_epoch: Callable[[int, float, float], None] | None = None,
                    incumbent: torch.Tensor | None = None,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                    start_map: Mapping[str, torch.Tensor] | None = None, warmup_epochs: float = 0.0) -> HeadFit:
    """Head rows for the learnt tokens: a `HeadMap` fitted by Adam on `data`'s cross-entropy,
    its learning rate raised linearly over `warmup_epochs`, then decayed to zero on a cosine. The
    map starts at the first-piece rows, or at `start_map` (a fitted map's parameters,
    `HeadFit.state`: a warm start).

    The rows of the epoch with the lowest cross-entropy on `held_out` (states of text the fit
    never reads) are returned, so extra epochs cannot overfit. `incumbent` (rows already in
    use, e.g. a trained model's) competes too: an epoch must beat it.

    The training steps run under `autocast` (bf16 matmuls: 1.9x faster on a 2-core CPU, held-out
    cross-entropy within 0.1%, BENCHMARKS.md); the held-out judgement always runs in fp32.
    """
    if not held_out.hidden.shape[0]:
        raise ValueError("fit_output_rows: no held-out positions to choose the epoch on")
    generator = torch.Generator().manual_seed(seed)
    head = HeadMap(features)
    if start_map is not None:
        head.load_state_dict({k: v.to(features.first.device, torch.float32) for k, v in start_map.items()})
    optim = torch.optim.Adam(head.parameters(), lr=lr)
    # Decayed to zero over the fit: at a constant rate the shared maps kept jumping between epochs
    # (held-out 5.19-5.75 nats) and the guard picked the luckiest epoch; decayed, the last epoch
    # is the best and better than any constant-rate one (BENCHMARKS.md, "The head fit's guard and schedule").
    # A warmup keeps a warm start near its map: Adam's first steps move every map entry by about
    # the full rate whatever its gradient (held-out 5.11 -> 7.5 nats after one epoch at 1e-3
    # without one; BENCHMARKS.md, "The head map kept").
    per_epoch = math.ceil(data.hidden.shape[0] / batch_size)
    steps, warmup = epochs * per_epoch, round(warmup_epochs * per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: lr_factor(step, warmup, steps, min_ratio=0.0))
    with torch.no_grad():
        best_rows = head.rows() if incumbent is None else incumbent
        best = first = mean_fit_loss(held_out, best_rows)
    best_state = None if incumbent is not None else map_state(head)
    best_epoch = 0
    for epoch in range(epochs):
        total, batches = 0.0, 0
        # the permutation is drawn on the CPU (the same on every device), then indexes on the data's device
        for index in torch.randperm(data.hidden.shape[0], generator=generator).to(data.hidden.device).split(batch_size):
            with autocast():
                loss = fit_loss(data, head.rows(), index)
                objective = loss + weight_decay * head.penalty()
            optim.zero_grad(set_to_none=True)
            objective.backward()
            optim.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        with torch.no_grad():
            rows = head.rows()
            held_loss = mean_fit_loss(held_out, rows)
        if held_loss < best:
            best_rows, best, best_epoch, best_state = rows, held_loss, epoch + 1, map_state(head)
        if on_epoch is not None:
            on_epoch(epoch, total / max(batches, 1), held_loss)
    return HeadFit(best_rows, first, best, best_epoch, best_state)


def map_state(head: HeadMap) -> dict[str, torch.Tensor]:
    """A detached copy of the map's parameters (what `fit_output_rows(start_map=...)` takes)."""
    return {name: value.detach().clone() for name, value in head.state_dict().items()}

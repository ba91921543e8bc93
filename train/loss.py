"""Forward pass and loss of one micro-batch, shared by every backend.

Every target token of an optimizer step weighs the same, however the step's samples are
split into micro-batches and ranks: each micro-batch contributes its *summed* loss divided
by the step's global count of target tokens (all ranks, all micro-batches), as torchtitan
and transformers do. A per-micro-batch mean would weigh a micro-batch with few targets
(SFT prompts, calibration, document-masked packs) as much as a full one, so the micro-batch
size, the accumulation steps or the world size would change the objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lingraft.data_prep.dataset import IGNORE_INDEX as IGNORE   # where the packed labels are masked
from lingraft.train.attention import attention_inputs
from lingraft.train.dist import all_reduce_sum
from lingraft.train.distill_batch import aligned_pair_count

if TYPE_CHECKING:
    from lingraft.train.anchor import Anchor
    from lingraft.train.distill import Distiller

@dataclass(frozen=True)
class StepTokens:
    """How many positions the step's loss terms average over, counted over every rank."""
    targets: float           # labels != IGNORE: the cross-entropy's denominator
    kl_positions: float = 0  # where the anchor's KL applies (0 without an anchor)
    distill_pairs: float = 0  # aligned pairs of the distillation's KL (0 without it; train/distill.py)

    @classmethod
    def of_step(cls, micro_batches: list[dict[str, torch.Tensor]], anchor: Anchor | None,
                device: torch.device) -> "StepTokens":
        """Global counts of one optimizer step (a collective: every rank calls it)."""
        local = [cls.of_batch(batch, anchor) for batch in micro_batches]
        targets, kl, pairs = all_reduce_sum([sum(t.targets for t in local), sum(t.kl_positions for t in local),
                                             sum(t.distill_pairs for t in local)], device)
        return cls(targets, kl, pairs)

    @classmethod
    def of_batch(cls, batch: dict[str, torch.Tensor], anchor: Anchor | None) -> "StepTokens":
        """One micro-batch's own counts (no collective): its loss is then its per-token mean."""
        targets = float((batch["labels"] != IGNORE).sum())
        return cls(targets, float(anchor.kl_mask(batch).sum()) if anchor is not None else 0.0,
                   aligned_pair_count(batch))


def micro_batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], attention: str,
                     doc_mask: bool, anchor: Anchor | None = None, step: StepTokens | None = None,
                     distill: Distiller | None = None) -> torch.Tensor:
    """This micro-batch's share of the step's loss: summed next-token cross-entropy over its
    targets / `step.targets` (+ the anchor's weighted KL, summed / `step.kl_positions`; with
    `distill`, the CE weighted by distill.ce_weight + its weighted KL, summed / `step.distill_pairs`).

    Summed over the step's micro-batches and ranks, the shares give the step's per-token mean
    loss. Without `step` the micro-batch is its own step: the result is its per-token mean.

    The packed samples carry labels already shifted by one (sample = seq_len + 1 tokens),
    so logits and labels line up position by position. The loss is computed here, in
    float32, rather than by the HF model, which would shift the labels a second time.
    """
    step = step if step is not None else StepTokens.of_batch(batch, anchor)
    inputs = attention_inputs(batch["position_ids"], attention, doc_mask)
    logits = model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits
    labels = batch["labels"].flatten()
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=IGNORE, reduction="sum")
    # A step whose targets are all masked contributes 0, not 0/0 = NaN.
    ce = total / max(step.targets, 1.0)
    # ce_weight * CE + weight * KL(p_teacher ‖ p_model) at aligned pairs, train/distill.py
    loss = ce if distill is None else distill.loss(ce, logits, batch, max(step.distill_pairs, 1.0))
    if anchor is None:
        return loss
    # CE + weight * KL(p_model ‖ p_ref), train/anchor.py
    return loss + anchor.penalty(logits, batch, inputs, max(step.kl_positions, 1.0))

"""Forward pass and loss of one micro-batch, shared by every backend."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lingraft.data_prep.dataset import IGNORE_INDEX as IGNORE   # where the packed labels are masked
from lingraft.train.attention import attention_inputs

if TYPE_CHECKING:
    from lingraft.train.anchor import Anchor

def micro_batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], attention: str,
                     doc_mask: bool, anchor: Anchor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the micro-batch's target tokens (+ the anchor's weighted KL).

    The packed samples carry labels already shifted by one (sample = seq_len + 1 tokens),
    so logits and labels line up position by position. The loss is computed here, in
    float32, rather than by the HF model, which would shift the labels a second time.
    """
    inputs = attention_inputs(batch["position_ids"], attention, doc_mask)
    logits = model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits
    labels = batch["labels"].flatten()
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=IGNORE, reduction="sum")
    # A micro-batch whose targets are all masked contributes 0, not 0/0 = NaN.
    ce = total / (labels != IGNORE).sum().clamp(min=1)
    if anchor is None:
        return ce
    return ce + anchor.penalty(logits, batch, inputs)   # CE + weight * KL(p_model ‖ p_ref), train/anchor.py

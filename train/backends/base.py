"""The interface every training engine implements, and the checks they share."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.train.dist import all_reduce_sum


@dataclass(frozen=True)
class StepResult:
    loss: float               # per-token mean over the step's targets, all ranks
    grad_norm: float | None   # global L2 norm before clipping
    lr: float
    metrics: dict[str, float] = field(default_factory=dict)   # extra per-step numbers to log (anchor: kl, ce)


class NonFiniteLoss(LingraftError):
    """A NaN/inf loss: the step was not applied, the run stops."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"non-finite loss ({loss})")
        self.loss = loss


class TrainBackend(Protocol):
    model: nn.Module

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """Forward/backward over the micro-batches, then one optimizer step (not applied on NaN/inf)."""

    def save(self, folder: Path) -> None:
        """Write model, optimizer and scheduler state; called by every rank."""

    def load(self, folder: Path) -> None: ...

    def optimizer_state_bytes(self) -> int:
        """Optimizer-state bytes held by this rank."""


def global_step_loss(shares: list[torch.Tensor], device: torch.device) -> float:
    """The step's loss: the sum of every micro-batch's share over all ranks (train/loss.py);
    raise NonFiniteLoss if any share is NaN/inf.

    One collective carries both numbers so that every rank takes the same decision
    (a rank raising alone would leave the others blocked in the next collective).
    """
    stacked = torch.stack([share.detach().float() for share in shares])
    finite = torch.isfinite(stacked)
    total, bad = all_reduce_sum([float(stacked[finite].sum()), float((~finite).sum())], device)
    if bad:
        raise NonFiniteLoss(float(stacked[~finite][0]) if (~finite).any() else math.nan)
    return total


def trainable_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by their first name (tied parameters appear once)."""
    seen, out = set(), {}
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out[name] = param
    return out

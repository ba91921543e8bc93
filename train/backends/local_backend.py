"""One process, plain PyTorch: the CPU path and the reference the distributed engines match.

Also the base of the FSDP2 engine, which differs only in how the model is wrapped, how
the gradient norm is reduced and how state is saved.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lingraft.train.anchor import build_anchor
from lingraft.train.backends.base import StepResult, global_step_loss, trainable_named_parameters
from lingraft.train.config import TrainConfig
from lingraft.train.dist import DistInfo
from lingraft.train.distill import build_distiller
from lingraft.train.loss import StepTokens, micro_batch_loss
from lingraft.train.model_setup import Runtime, weights_dtype
from lingraft.train.optim import build_optimizer, build_scheduler, optimizer_state_bytes

STATE_FILE = "state.pt"


class LocalBackend:
    def __init__(self, model: nn.Module, cfg: TrainConfig, runtime: Runtime, dist: DistInfo) -> None:
        self.cfg, self.runtime, self.dist = cfg, runtime, dist
        self.model = self.wrap(model)
        # The frozen reference of anchor.weight > 0, wrapped (sharded) the same way as the model.
        self.anchor = build_anchor(cfg, model.config.vocab_size, runtime.device, weights_dtype(cfg, runtime),
                                   runtime.attention, wrap=self.wrap)
        # The teacher of distill.weight > 0, likewise (train/distill.py).
        self.distill = build_distiller(cfg, model.config.vocab_size, runtime.device, weights_dtype(cfg, runtime),
                                       runtime.attention, wrap=self.wrap)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.max_steps)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    # Gradient reduction averages over this many ranks; each share of the loss is scaled back up
    # by it, so the reduced gradient is that of the step's per-token mean (train/loss.py).
    @property
    def grad_average_over(self) -> int:
        return 1

    def autocast(self):
        # Weights stay fp32 (they are the master copy); matmuls run in bf16 (CPU and GPU).
        if self.runtime.dtype == torch.bfloat16:
            return torch.autocast(self.runtime.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_norm_and_clip(self) -> float:
        max_norm = self.cfg.optim.grad_clip or float("inf")
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        losses = []
        tokens = StepTokens.of_step(micro_batches, self.anchor, self.runtime.device)
        for batch in micro_batches:
            with self.autocast():
                loss = micro_batch_loss(self.model, batch, self.runtime.attention, self.cfg.doc_mask,
                                        anchor=self.anchor, step=tokens, distill=self.distill)
            (loss * self.grad_average_over).backward()
            losses.append(loss.detach())
        try:
            mean_loss = global_step_loss(losses, self.runtime.device)
        except Exception:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        metrics = self.anchor.step_metrics(mean_loss, self.runtime.device) if self.anchor else {}
        if self.distill:
            metrics.update(self.distill.step_metrics(tokens.distill_pairs, self.runtime.device))
        grad_norm = self.grad_norm_and_clip()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=mean_loss, grad_norm=grad_norm, lr=lr, metrics=metrics)

    def optimizer_state_bytes(self) -> int:
        return optimizer_state_bytes(self.optimizer)

    # -- state ----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        trainable = {name: p.detach().cpu() for name, p in trainable_named_parameters(self.model).items()}
        torch.save({"trainable": trainable, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}, folder / STATE_FILE)

    def load(self, folder: Path) -> None:
        state = torch.load(folder / STATE_FILE, map_location=self.runtime.device, weights_only=True)
        params = trainable_named_parameters(self.model)
        if set(params) != set(state["trainable"]):
            from lingraft.errors import LingraftError
            raise LingraftError(f"{folder}: checkpoint trains {sorted(state['trainable'])[:3]}..., "
                                f"this config trains {sorted(params)[:3]}...; same `trainable` needed to resume")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state["trainable"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def read_trainable_state(engine_dir: Path) -> dict[str, torch.Tensor]:
    """Trained parameters of a local checkpoint, for export."""
    return torch.load(engine_dir / STATE_FILE, map_location="cpu", weights_only=True)["trainable"]

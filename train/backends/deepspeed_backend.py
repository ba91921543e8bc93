"""DeepSpeed ZeRO 1/2/3 with a client torch AdamW and the cosine schedule.

The model arrives frozen (and split for new_rows), so DeepSpeed's flat buffers, gradient
partitions and optimizer states cover exactly the trainable tensors. Checkpoints leave
frozen weights out; they come from the base model on resume and export.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from lingraft.train.anchor import build_anchor
from lingraft.train.backends.base import StepResult, global_step_loss
from lingraft.train.config import TrainConfig
from lingraft.train.dist import DistInfo, skip_deepspeed_shm_build
from lingraft.train.distill import build_distiller
from lingraft.train.ds_config import fill_ds_config
from lingraft.train.frozen_body import persist_frozen
from lingraft.train.loss import StepTokens, micro_batch_loss
from lingraft.train.model_setup import Runtime, weights_dtype
from lingraft.train.optim import build_optimizer, build_scheduler, optimizer_state_bytes

TAG = "zero"


class DeepSpeedBackend:
    def __init__(self, model: nn.Module, cfg: TrainConfig, runtime: Runtime, dist: DistInfo) -> None:
        skip_deepspeed_shm_build()   # a single process lets deepspeed.initialize start the group
        import deepspeed
        self.cfg, self.runtime = cfg, runtime
        ds_config = fill_ds_config(cfg, dist.world_size, runtime.dtype == torch.bfloat16, model.config.hidden_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, cfg.optim), config=ds_config,
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.optim, cfg.max_steps), dist_init_required=False)
        self.model = self.engine.module
        if ds_config["zero_optimization"]["stage"] == 3:
            persist_frozen(self.model, self.optimizer, cfg)   # frozen_body.placement=replicate
        self.anchor = build_anchor(cfg, model.config.vocab_size, runtime.device, weights_dtype(cfg, runtime),
                                   runtime.attention, wrap=lambda ref: wrap_reference(ref, ds_config))
        self.distill = build_distiller(cfg, model.config.vocab_size, runtime.device, weights_dtype(cfg, runtime),
                                       runtime.attention, wrap=lambda ref: wrap_reference(ref, ds_config))

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        losses = []
        last = len(micro_batches) - 1
        tokens = StepTokens.of_step(micro_batches, self.anchor, self.runtime.device)
        for i, batch in enumerate(micro_batches):
            loss = micro_batch_loss(self.engine, batch, self.runtime.attention, self.cfg.doc_mask,
                                    anchor=self.anchor, step=tokens, distill=self.distill)
            # Each share is already divided by the step's global token count (train/loss.py): no
            # 1/gradient_accumulation_steps, and ×world_size against ZeRO's averaging over ranks.
            self.engine.backward(loss * self.engine.dp_world_size, scale_wrt_gas=False)
            losses.append(loss.detach())
            if i < last:
                self.engine.step()            # not a boundary: only advances DeepSpeed's counters
        mean_loss = global_step_loss(losses, self.runtime.device)   # raises before the update on NaN/inf
        metrics = self.anchor.step_metrics(mean_loss, self.runtime.device) if self.anchor else {}
        if self.distill:
            metrics.update(self.distill.step_metrics(tokens.distill_pairs, self.runtime.device))
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return StepResult(loss=mean_loss, grad_norm=None if norm is None else float(norm), lr=lr, metrics=metrics)

    def optimizer_state_bytes(self) -> int:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)   # ZeRO wraps the client AdamW
        return optimizer_state_bytes(inner)

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=TAG, save_latest=False, exclude_frozen_parameters=True)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            from lingraft.errors import LingraftError
            raise LingraftError(f"{folder}: no DeepSpeed checkpoint to resume from")


def wrap_reference(reference: nn.Module, ds_config: dict) -> nn.Module:
    """The anchor's frozen reference held like the trained model: under ZeRO-3 a ZeRO-3 engine
    without optimizer partitions it across ranks (the layout TRL uses for reference models);
    ZeRO-1/2 replicate parameters anyway, so the plain module is kept."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return reference
    import deepspeed
    # A copy: DeepSpeed writes into the dict it is given.
    engine, *_ = deepspeed.initialize(model=reference, config=copy.deepcopy(ds_config), dist_init_required=False)
    engine.eval()
    return engine


def read_trainable_state(engine_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 trained parameters of a ZeRO checkpoint (frozen ones are not in it), for export."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(engine_dir), tag=TAG, exclude_frozen_parameters=True)

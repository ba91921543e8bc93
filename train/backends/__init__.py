"""Training engines behind one interface (`TrainBackend`): local, DeepSpeed ZeRO and FSDP2."""
from __future__ import annotations

from lingraft.train.backends.base import NonFiniteLoss, StepResult, TrainBackend

__all__ = ["NonFiniteLoss", "StepResult", "TrainBackend", "build_backend"]


def build_backend(cfg, model, runtime, dist) -> TrainBackend:
    if cfg.backend == "deepspeed":
        from lingraft.train.backends.deepspeed_backend import DeepSpeedBackend
        return DeepSpeedBackend(model, cfg, runtime, dist)
    if cfg.backend == "fsdp":
        from lingraft.train.backends.fsdp_backend import FSDPBackend
        return FSDPBackend(model, cfg, runtime, dist)
    from lingraft.train.backends.local_backend import LocalBackend
    return LocalBackend(model, cfg, runtime, dist)

"""DeepSpeed configs: the ZeRO templates (package data, `lingraft.ds_configs`) with their "auto" values filled in.

Light module (json only) so that `lingraft train` can fill and check the config before it
launches any process.
"""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lingraft.config import ConfigError
from lingraft.train.config import TrainConfig

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable   # Python 3.11+; only a type here

# Read through importlib.resources: the templates ship inside the wheel, wherever it is installed.
TEMPLATES = files("lingraft.ds_configs")


def template_path(cfg: TrainConfig) -> Path | Traversable:
    return Path(cfg.ds_config) if cfg.ds_config else TEMPLATES / f"zero{cfg.zero_stage}.json"


def fill_ds_config(cfg: TrainConfig, world_size: int, bf16: bool, hidden_size: int) -> dict[str, Any]:
    """The template with every "auto" resolved from the training config; errors name the key."""
    path = template_path(cfg)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"ds_config: cannot read {path} ({exc})") from None
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"ds_config: {path} has an {section!r} section; lingraft builds AdamW and the "
                              "cosine schedule itself from `optim` (remove the section)")
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != cfg.zero_stage:
        raise ConfigError(f"ds_config: {path} sets ZeRO stage {stage}, the config says zero_stage={cfg.zero_stage}")
    auto = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16.enabled": bf16,
        # The same sizes the HF Trainer integration derives from the hidden size.
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    _fill(ds, "", auto)
    # The optimizer is torch.optim.AdamW (no compiled DeepSpeed ops needed, CPU included).
    ds["zero_allow_untested_optimizer"] = True
    if bf16:
        _reduce_in_fp32(ds, path)
    return ds


def _reduce_in_fp32(ds: dict[str, Any], path: Path) -> None:
    """Gradients are reduced and accumulated in fp32 under bf16 weights.

    A rare new row gets a gradient from few tokens; summed in bf16 (8 mantissa bits) over
    ranks and micro-batches beside large ones, it rounds away. A template that asks for
    something else on purpose keeps its value.
    """
    if not isinstance(ds.setdefault("data_types", {}), dict):
        raise ConfigError(f"ds_config: {path}: data_types must be a section")
    ds["data_types"].setdefault("grad_accum_dtype", "fp32")
    ds.setdefault("communication_data_type", "fp32")


def _fill(node: dict[str, Any], prefix: str, auto: dict[str, Any]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            _fill(value, f"{path}.", auto)
        elif value == "auto":
            if path not in auto:
                raise ConfigError(f"ds_config: no value for \"auto\" at {path}; set it in the template")
            node[key] = auto[path]

"""The training step of `lingraft calibrate`: pack the calibration chats, fine-tune, export.

Nothing here trains by itself: the chats go through `lingraft prep sft` (assistant-only loss
mask), the run through `lingraft train` with trainable=lora (in this process for the local
backend, else through its launcher, so every backend works), and the result through
`lingraft export`, which merges the adapters.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from lingraft.atomic import write_bytes
from lingraft.config import ConfigError, build_config
from lingraft.log import get_logger
from lingraft.propagate.calibrate.config import CalibrateConfig

log = get_logger(__name__)

SFT_DIR, RUN_DIR, MODEL_DIR = "sft", "train", "model"
FINGERPRINT_FILE = "calibration_fingerprint.txt"


def train_config(cfg: CalibrateConfig, data: Path, max_steps: int) -> Any:
    """The TrainConfig of the fine-tuning run: the calibrate settings, then `train.overrides` on top."""
    from lingraft.train.config import TrainConfig
    t = cfg.train
    tree: dict[str, Any] = {
        "model": cfg.model, "data": str(data), "out_dir": str(Path(cfg.out) / RUN_DIR), "max_steps": max_steps,
        "backend": t.backend, "trainable": "lora", "micro_batch_size": t.micro_batch_size,
        "grad_accum_steps": t.grad_accum_steps, "seed": cfg.seed,
        "lora": {"r": t.lora_r, "alpha": t.lora_alpha, "dropout": t.lora_dropout,
                 "layers": None if t.lora_layers is None else list(t.lora_layers),
                 "train_tables": t.train_tables},
        "optim": {"lr": t.lr, "warmup_steps": min(t.warmup_steps, max_steps)},
    }
    try:
        return build_config(TrainConfig, overrides=tree, dotted=[f"{k}={v}" for k, v in t.overrides.items()])
    except ConfigError as exc:
        raise ConfigError(f"train (the fine-tuning run's TrainConfig): {exc}") from None


def steps_for(samples: int, train_cfg: Any, epochs: float) -> int:
    """Optimizer steps that show every packed sample `epochs` times across all ranks."""
    from lingraft.train.launcher import world_size
    per_step = train_cfg.micro_batch_size * train_cfg.grad_accum_steps * world_size(train_cfg)
    return max(1, math.ceil(epochs * samples / per_step))


def launch(run_cfg: Any) -> None:
    """One local process trains right here; anything else goes through `lingraft train`'s launcher."""
    from lingraft.train.launcher import launcher_for, preflight
    from lingraft.train.launcher import run as launch_training
    if launcher_for(run_cfg) == "none":
        from lingraft.train.loop import train
        preflight(run_cfg)
        train(run_cfg)
    else:
        launch_training(run_cfg)


def run_fingerprint(calibration: Path, run_cfg: Any) -> str:
    from lingraft.config import to_dict
    from lingraft.hashing import sha256_file, sha256_text
    return sha256_text(sha256_file(calibration) + json.dumps(to_dict(run_cfg), sort_keys=True))


def fresh_run_dir(run_dir: Path, fingerprint: str) -> None:
    """Resume the run only if it trains on the same calibration data with the same settings.

    Changing a filter or the copy settings rewrites calibration.jsonl; resuming the old run
    would quietly continue training on the old data, so its folder is removed instead."""
    stamp = run_dir / FINGERPRINT_FILE
    if run_dir.exists() and not (stamp.is_file() and stamp.read_text(encoding="utf-8") == fingerprint):
        log.warning("%s was trained on other calibration data or settings: starting it afresh", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes(stamp, fingerprint.encode())


def run_training(cfg: CalibrateConfig, calibration: Path) -> dict[str, Any]:
    """Pack, train and export; returns what the manifest reports about it."""
    from lingraft.data_prep.sft_config import SftPackConfig
    from lingraft.data_prep.sft_pack import run_sft_pack
    from lingraft.manifest import read_manifest
    from lingraft.train.export import ExportConfig, export

    out = Path(cfg.out)
    sft = run_sft_pack(SftPackConfig(input=[Path(calibration)], tokenizer=str(cfg.model), out=out / SFT_DIR,
                                     seq_len=cfg.train.seq_len, text_field="text"))   # the replay records
    packed = read_manifest(sft)["metrics"]
    steps = cfg.train.max_steps or steps_for(packed["samples"], train_config(cfg, sft, 1), cfg.train.epochs)
    run_cfg = train_config(cfg, sft, steps)
    log.info("calibration fine-tuning: %d steps over %d packed samples", steps, packed["samples"])
    fresh_run_dir(Path(run_cfg.out_dir), run_fingerprint(calibration, run_cfg))
    launch(run_cfg)
    model = export(ExportConfig(checkpoint=Path(run_cfg.out_dir), out=out / MODEL_DIR))
    return {"sft": str(sft), "run": str(run_cfg.out_dir), "model": str(model), "max_steps": steps,
            "packed_samples": packed["samples"], "packed_chats": packed["chats_kept"],
            "packed_chats_skipped": packed["skipped"], "target_tokens": packed["target_tokens"]}

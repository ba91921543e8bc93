"""Per-step metrics of rank 0: a JSONL file, TensorBoard, optional wandb, a PNG loss curve.

`metrics.jsonl` is the source of truth (one object per optimizer step). On resume it is
cut back to the checkpoint's step, so steps redone after a crash appear once and the
file reads like an uninterrupted run's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lingraft.atomic import atomic_open
from lingraft.log import get_logger
from lingraft.train.config import LogConfig

log = get_logger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:   # a line torn by a kill: drop it, it is redone
            break
    return rows


class MetricsLogger:
    def __init__(self, out_dir: Path, cfg: LogConfig, enabled: bool, resume_step: int, run_config: dict) -> None:
        self.out_dir, self.cfg, self.enabled = Path(out_dir), cfg, enabled
        self.tb = self.wandb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.out_dir) if r["step"] <= resume_step]
        with atomic_open(self.out_dir / METRICS_FILE) as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        self.fh = open(self.out_dir / METRICS_FILE, "a", encoding="utf-8")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resume_step + 1)
        if cfg.wandb_project:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, config=run_config, dir=str(self.out_dir),
                                    resume="allow", id=self.out_dir.resolve().name)

    def log_step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"train/{key}", value, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> Path | None:
        if not self.enabled:
            return None
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        return plot_loss(self.out_dir) if self.cfg.plot else None


def plot_loss(out_dir: Path) -> Path | None:
    rows = read_metrics(out_dir)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(Path(out_dir).name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / PLOT_FILE
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path

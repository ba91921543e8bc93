"""The table `lingraft pipeline` prints at the end: status, seconds and one key metric per stage.

The metric is read back from what the stage wrote, so a skipped stage shows the number of
the run that produced its output: a folder's ``manifest.json`` (for an eval stage, its first
headline number, e.g. ``B/bpc/ud_russian/bits_per_char=3.424``).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lingraft.manifest import MANIFEST_NAME

# Dotted keys into a stage's manifest; an eval stage's manifest holds its headline numbers.
DEFAULT_METRICS: dict[str, str] = {
    "prep clean": "outputs.chars",
    "prep pack": "outputs.counts.tokens",
    "tokenizer train": "metrics.vocab_size",
    "tokenizer extend": "metrics.added",
    "tokenizer optimize": "metrics.vocab_size",
    "init": "metrics.rows",
    "fit-head": "metrics.held_out_cross_entropy",
    "train": "metrics.final_loss",
    "export": "metrics.trained_tensors",
    "propagate": "metrics.tokens",
    "skillpack create": "metrics.pack_bytes",
    "model random": "metrics.parameters",
}


@dataclass
class StageRow:
    stage: str
    status: str              # ran | resumed | skipped | failed | disabled
    seconds: float
    out: str
    metric: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "seconds": self.seconds, "out": self.out,
                "metric": self.metric}


def _lookup(record: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def _read_record(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST_NAME if out.is_dir() else out
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _format(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def key_metric(command: str, out: Path | None, dotted: str | None) -> str:
    """``name=value`` of the stage's key metric, or '' when its output holds none."""
    if out is None:
        return ""
    record = _read_record(out)
    if record is None:
        return ""
    if dotted is None and str(record.get("stage", "")).startswith("eval ") and record.get("metrics"):
        name, value = next(iter(record["metrics"].items()))     # an eval stage: its first headline number
        return f"{name}={_format(value)}"
    dotted = dotted or DEFAULT_METRICS.get(command)
    value = _lookup(record, dotted) if dotted else None
    if value is None:
        return ""
    return f"{dotted.rsplit('.', 1)[-1]}={_format(value)}"


def format_table(rows: list[StageRow]) -> str:
    header = ("stage", "status", "seconds", "key metric", "output")
    cells = [header] + [(r.stage, r.status, f"{r.seconds:.1f}", r.metric or "-", r.out) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = []
    for c in cells:
        stage, status, seconds, metric, out = c
        lines.append(f"{stage:<{widths[0]}}  {status:<{widths[1]}}  {seconds:>{widths[2]}}  "
                     f"{metric:<{widths[3]}}  {out}")
    counts = Counter(r.status for r in rows)
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()) + f"; {sum(r.seconds for r in rows):.1f} s")
    return "\n".join(lines)

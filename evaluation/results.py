"""The result JSON every eval task writes: fixed top-level keys, then the task's metrics.

    {"task": "bpc", "model": "smollm2", "label": "ud_russian", <metrics...>, "meta": {...}}

`HEADLINE` names, per task, the metrics that the side-by-side report shows.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from lingraft import __version__
from lingraft.atomic import write_json
from lingraft.config import to_dict
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_tree

HEADLINE: dict[str, tuple[str, ...]] = {
    "bpc": ("bits_per_char", "bits_per_byte"),
    "tokenizer": ("chars_per_token", "tokens_per_word"),
    "copy": ("sentence_length_ratio", "paragraph_match_share"),
    "mc": ("acc", "acc_norm"),
    "speed": ("tokens_per_s", "chars_per_s"),
}


def write_result(path: str | Path, task: str, model: str, label: str, metrics: dict[str, Any],
                 cfg: Any, inputs: dict[str, str | Path], extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    reserved = {"task", "model", "label", "meta"} & set(metrics)
    if reserved:
        raise ValueError(f"metric names clash with reserved keys: {sorted(reserved)}")
    meta = {"params": to_dict(cfg),
            "inputs": {k: {"path": str(p), "sha256": sha256_tree(p) if Path(p).exists() else None}
                       for k, p in inputs.items()},
            "lingraft_version": __version__, "host": platform.node(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_meta or {})}
    result = {"task": task, "model": model, "label": label, **metrics, "meta": meta}
    write_json(path, result)
    return result


def read_result(path: str | Path) -> dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LingraftError(f"{path}: no such result file") from None
    except json.JSONDecodeError:
        raise LingraftError(f"{path}: not JSON") from None
    if not isinstance(result, dict) or not {"task", "model", "label"} <= set(result):
        raise LingraftError(f"{path}: not a lingraft eval result (needs task, model and label keys)")
    if result["task"] not in HEADLINE:
        raise LingraftError(f"{path}: unknown task {result['task']!r}")
    return result

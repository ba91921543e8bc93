"""Stage manifests: what went in (with hashes), the parameters, and what came out.

Every stage writes `manifest.json` into its output folder, atomically and last, so its
presence means the stage finished. `fingerprint` covers inputs and parameters only; the
pipeline compares it to decide whether a stage can be skipped.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingraft import __version__
from lingraft.atomic import write_json
from lingraft.config import to_dict
from lingraft.hashing import sha256_text, sha256_tree

MANIFEST_NAME = "manifest.json"


class ManifestError(RuntimeError):
    pass


def describe_input(path: str | Path) -> dict[str, Any]:
    """A manifest entry for an input file or folder: its path, size and content hash."""
    p = Path(path)
    if not p.exists():
        return {"path": str(path), "sha256": None, "note": "not a local path (hub id?)"}
    size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return {"path": str(p), "bytes": size, "sha256": sha256_tree(p)}


@dataclass
class Manifest:
    stage: str
    params: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        key = json.dumps({"stage": self.stage, "params": self.params, "inputs": self.inputs},
                         sort_keys=True, ensure_ascii=False, default=str)
        return sha256_text(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "params": self.params,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "lingraft_version": __version__,
            "host": platform.node(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / MANIFEST_NAME
        write_json(path, self.to_json())
        return path


def new_manifest(stage: str, cfg: Any, inputs: dict[str, str | Path] | None = None) -> Manifest:
    return Manifest(stage=stage, params=to_dict(cfg),
                    inputs={k: describe_input(v) for k, v in (inputs or {}).items()})


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST_NAME
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the stage did not finish?)") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: corrupt manifest ({exc})") from None

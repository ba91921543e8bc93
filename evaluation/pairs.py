"""Every (model, data set) pair of one eval command: each model loaded once, one result set, one report.

The output folder `out` holds
  results.jsonl  one EvalResult per pair: the models in the order given, and for each the data
                 sets in the order given; rewritten atomically after every pair, so a run that is
                 killed keeps every pair it finished;
  report.md      the pairs side by side (evaluation.report: a row per metric, a column per model);
  manifest.json  written last, as by every stage: params, data inputs, the headline numbers.
A rerun into the same folder reuses each pair whose key is unchanged and computes the others.
The key covers the task, its parameters (all but the model and set lists), the model's name
and spec, the data set's entry, and the size and newest modification time of the model's and
the data set's files (so a model retrained in place is scored again).
"""
from __future__ import annotations

import gc
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from lingraft import __version__
from lingraft.atomic import atomic_path
from lingraft.config import to_dict
from lingraft.errors import LingraftError
from lingraft.evaluation.models import split_name
from lingraft.evaluation.report import build_report, flat_values, markdown_table
from lingraft.evaluation.results import RESULTS_NAME, EvalResult, read_results, write_results
from lingraft.hashing import sha256_text, sha256_tree
from lingraft.log import get_logger
from lingraft.manifest import Manifest, describe_input

log = get_logger(__name__)
T = TypeVar("T")
# What measuring one pair returns: the metrics (numbers) and extra meta of its record.
Measured = tuple[dict[str, float], dict[str, Any]]


@dataclass
class EvalSet(Generic[T]):
    """A data set, read before any model is loaded (so bad data fails in seconds)."""
    spec: Any              # its config entry (DataSet, McTask): part of the pair key
    name: str
    path: Path
    items: T               # what the task reads from it (texts, copy items, mc items)


def stamp(path: str | Path) -> list[int] | None:
    """Total size and newest modification time of a file or a folder's files; None if not local."""
    p = Path(path)
    if not p.exists():
        return None
    stats = [p.stat()] if p.is_file() else [f.stat() for f in p.rglob("*") if f.is_file()]
    return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def pair_key(task: str, params: dict[str, Any], model: tuple[str, str], data: EvalSet) -> str:
    name, spec = model
    return sha256_text(json.dumps({"task": task, "params": params, "model": [name, spec, stamp(spec)],
                                   "data": [to_dict(data.spec), stamp(data.path)]}, sort_keys=True, default=str))


def release_memory() -> None:
    """Drop the last model before the next one loads (two 8B models need not fit at once)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Inputs:
    """The `inputs` entry of each record's meta, each file hashed once per run."""

    def __init__(self) -> None:
        self._hashes: dict[str, str | None] = {}

    def __call__(self, path: Path) -> dict[str, Any]:
        key = str(path)
        if key not in self._hashes:
            self._hashes[key] = sha256_tree(path) if path.exists() else None
        return {"data": {"path": key, "sha256": self._hashes[key]}}


def _existing(out: Path) -> dict[str, EvalResult]:
    """The records of an earlier run into `out`, by key."""
    if out.exists() and not out.is_dir():
        raise LingraftError(f"{out}: an eval output is a folder (results.jsonl, report.md); this is a file")
    if not (out / RESULTS_NAME).is_file():
        return {}
    return {r.key: r for r in read_results(out / RESULTS_NAME) if r.key}


def run_pairs(task: str, cfg: Any, sets: Sequence[EvalSet], measure: Callable[[Any, EvalSet], Measured],
              load: Callable[[str], Any], axes: Sequence[str], models: Sequence[str] | None = None,
              finish: Callable[[list[EvalResult]], list[EvalResult]] | None = None) -> list[EvalResult]:
    """Score every model of `models` (default `cfg.model`) on every set; see the module docstring.

    `load(spec)` returns the loaded model (with `.name` and `.describe()`), `measure(loaded, set)`
    its metrics on one set; `axes` are the config fields that list models and sets (left out of
    the key); `finish` may complete the records once all are there (e.g. ratios to a baseline)."""
    specs = list(cfg.model if models is None else models)
    named = [split_name(s) for s in specs]
    for kind, names in (("model", [n for n, _ in named]), ("data set", [s.name for s in sets])):
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise LingraftError(f"{kind} names clash: {clashes}; name them with name=...")
    out = Path(cfg.out)
    done = _existing(out)
    params = {k: v for k, v in to_dict(cfg).items() if k not in {"out", *axes}}
    inputs = _Inputs()
    records: list[EvalResult] = []
    for spec, model in zip(specs, named):
        keys = [pair_key(task, params, model, s) for s in sets]
        loaded = load(spec) if any(k not in done for k in keys) else None
        for data, key in zip(sets, keys):
            if key in done:
                log.info("%s %s on %s: unchanged since the last run, kept", task, model[0], data.name)
                records.append(done[key])
                continue
            metrics, extra = measure(loaded, data)
            meta = {"key": key, "params": to_dict(cfg), "inputs": inputs(data.path), "lingraft_version": __version__,
                    "host": platform.node(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **loaded.describe(), **extra}
            records.append(EvalResult(task, model[0], data.name, str(data.path), metrics, meta))
            out.mkdir(parents=True, exist_ok=True)
            write_results(out / RESULTS_NAME, records + [r for r in done.values() if r not in records])
        loaded = None
        release_memory()
    if finish is not None:
        records = finish(records)
    write_outputs(out, records, f"eval {task}", cfg, {s.name: s.path for s in sets})
    return records


def write_outputs(out: Path, records: list[EvalResult], stage: str, cfg: Any, inputs: dict[str, Path]) -> str:
    """results.jsonl, report.md, then manifest.json; print and return the report table."""
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / RESULTS_NAME, records)
    report = build_report(records, [str(out / RESULTS_NAME)])
    table = markdown_table(report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    manifest = Manifest(stage=stage, params=to_dict(cfg), inputs={k: describe_input(v) for k, v in inputs.items()},
                        outputs={"results": RESULTS_NAME, "report": "report.md", "records": len(records)},
                        metrics=flat_values(report))
    manifest.write(out)
    print(table, end="")
    log.info("%s: %d records in %s", stage, len(records), out)
    return table

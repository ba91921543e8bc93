"""The one record every eval task writes, one per (model, data set) pair, and how results are read back.

An eval output folder holds `results.jsonl`, one `EvalResult` per line:

    {"task": "bpc", "model": "B", "label": "ud_russian", "data": "../ud_russian_sentences.jsonl",
     "metrics": {"bits_per_char": 3.42, ...}, "meta": {"params": ..., "inputs": ..., "key": ...}}

`metrics` holds numbers only; anything else (a copy set's kind and examples, mc's skipped
reasons, the speed baseline's name) is in `meta`. `HEADLINE` names, per task, the metrics a
side-by-side report shows. `read_results` also reads the earlier format, one JSON per model
with the metrics at the top level (and copy sets, mc tasks and a speed baseline nested), as
the records it would be now.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lingraft.atomic import atomic_path
from lingraft.errors import LingraftError

RESULTS_NAME = "results.jsonl"
HEADLINE: dict[str, tuple[str, ...]] = {
    "bpc": ("bits_per_char", "bits_per_byte"),
    "tokenizer": ("chars_per_token", "tokens_per_word"),
    "copy": ("length_ratio", "match_share"),
    "mc": ("acc", "acc_norm"),
    "speed": ("tokens_per_s", "chars_per_s"),
}
_FIXED = ("task", "model", "label", "data", "metrics", "meta")


@dataclass(frozen=True)
class EvalResult:
    task: str                     # a key of HEADLINE
    model: str                    # the model's name (`name=spec`, else the folder name)
    label: str                    # the data set's name
    data: str                     # the data set's path
    metrics: dict[str, float]     # numbers only
    meta: dict[str, Any] = field(default_factory=dict)   # params, inputs, model description, task extras

    @property
    def key(self) -> str | None:
        """What the pair was computed from (evaluation.pairs): a rerun with the same key reuses it."""
        return self.meta.get("key")

    def headline(self) -> dict[str, float]:
        return {k: self.metrics[k] for k in HEADLINE[self.task] if self.metrics.get(k) is not None}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: Any, where: str) -> EvalResult:
        if not isinstance(record, dict) or set(record) != set(_FIXED):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise LingraftError(f"{where}: not a lingraft eval record (needs exactly {', '.join(_FIXED)}; has {keys})")
        if record["task"] not in HEADLINE:
            raise LingraftError(f"{where}: unknown task {record['task']!r}")
        bad = [k for k, v in record["metrics"].items() if not _number(v) and v is not None]
        if bad:
            raise LingraftError(f"{where}: metric {bad[0]!r} is not a number")
        return cls(**record)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_results(path: str | Path, records: Iterable[EvalResult]) -> None:
    """All records as JSON Lines, atomically (a reader sees the old file or the new one)."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_results(path: str | Path) -> list[EvalResult]:
    """The records of an eval output: a folder holding results.jsonl, a results.jsonl, or the
    earlier format (a result JSON, or a folder of them)."""
    path = Path(path)
    if path.is_dir():
        if (path / RESULTS_NAME).is_file():
            return read_results(path / RESULTS_NAME)
        old = sorted(path.glob("*.json"))
        if not old:
            raise LingraftError(f"{path}: no {RESULTS_NAME} (nor eval result JSONs) in this folder")
        return [r for p in old for r in read_results(p)]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LingraftError(f"{path}: no such result file") from None
    if path.suffix == ".json":
        try:
            return from_old_format(json.loads(text), str(path))
        except json.JSONDecodeError:
            raise LingraftError(f"{path}: not JSON") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(EvalResult.from_json(json.loads(line), f"{path}:{lineno}"))
            except json.JSONDecodeError:
                raise LingraftError(f"{path}:{lineno}: not JSON") from None
    return records


def read_result(path: str | Path) -> EvalResult:
    """The record of an output that scored one model on one data set."""
    records = read_results(path)
    if len(records) != 1:
        raise LingraftError(f"{path}: {len(records)} records; read_results reads several")
    return records[0]


def from_old_format(result: Any, where: str) -> list[EvalResult]:
    """The records an earlier result JSON (metrics at the top level) stands for."""
    if not isinstance(result, dict) or not {"task", "model", "label"} <= set(result):
        raise LingraftError(f"{where}: not a lingraft eval result (needs task, model and label keys)")
    task, model, label, meta = result["task"], result["model"], result["label"], result.get("meta", {})
    if task not in HEADLINE:
        raise LingraftError(f"{where}: unknown task {task!r}")
    inputs = meta.get("inputs", {})

    def record(set_name: str, values: dict[str, Any], extra: dict[str, Any], model_name: str = model) -> EvalResult:
        path = (inputs.get(set_name) or inputs.get("data") or {}).get("path", "")
        other = {k: v for k, v in values.items() if not _number(v) and not isinstance(v, dict) and v is not None}
        return EvalResult(task, model_name, set_name, path, {k: v for k, v in values.items() if _number(v)},
                          {**meta, **other, **extra})

    if task == "copy":
        return [record(name, s, {"kind": s.get("kind"), "examples": meta.get("examples", {}).get(name, [])})
                for name, s in result["sets"].items()]
    if task == "mc":
        return [record(name, {**t, "num_fewshot": result.get("num_fewshot")},
                       {"skipped_reasons": t.get("skipped_reasons", {})}) for name, t in result["tasks"].items()]
    top = {k: v for k, v in result.items() if k not in ("task", "model", "label", "meta")}
    if task == "speed" and isinstance(result.get("baseline"), dict):
        base = result["baseline"]
        return [record(label, base, {"role": "baseline"}, base["model"]),
                record(label, top, {"baseline": base["model"]})]
    return [record(label, top, {})]

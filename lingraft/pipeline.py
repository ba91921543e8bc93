"""`lingraft pipeline`: run registered stage commands in order, skipping finished ones.

Every stage gets a fingerprint: a hash of its command, its fully resolved config (minus
fields marked runtime-only, such as train's `launch`, which say how to run, not what to
compute), the content of the local inputs its config's types declare (`Path` fields and
`ModelRef`s naming local paths; never `OutputPath`s or plain strings: see `lingraft.config`),
and the identity of the upstream outputs it reads (their fingerprint plus the run that
wrote them, so a rerun upstream always reruns what reads it). The ledger
``<work_dir>/pipeline_ledger.json`` records per stage the fingerprint and whether its last
run finished. Then:

* finished, same fingerprint, output present   -> skipped;
* started but never finished (killed, failed), same fingerprint -> run again, and the stage
  resumes its own partial work where it can (train from its last checkpoint, pack from its
  finished shards);
* anything else (new stage, changed fingerprint, `force`) -> outputs this pipeline wrote
  with other parameters are discarded, so nothing resumes from incompatible state; then run.

Everything is validated before the first stage starts: every placeholder, every stage config.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from lingraft.atomic import write_json
from lingraft.registry import Command, all_commands, resolve_runner
from lingraft.config import RUNTIME_ONLY, ConfigError, build_config, path_fields, ref_paths, to_dict
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_text, sha256_tree
from lingraft.log import get_logger
from lingraft.paths import is_inside
from lingraft.pipeline_config import PipelineConfig, StageSpec
from lingraft.pipeline_summary import StageRow, format_table, key_metric

log = get_logger("pipeline")
LEDGER_NAME = "pipeline_ledger.json"
OUTPUT_KEYS = ("out", "out_dir")
# `{builtin:NAME}`: resources lingraft can fetch itself, resolved only when a config names them.
BUILTINS: dict[str, str] = {"smollm2": "lingraft.demo_model:smollm2_path"}
# One pass over a string, so an expanded value is never scanned again.
_TOKEN = re.compile(r"\$\{(?P<env>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<open>\{\{)|(?P<close>\}\})"
                    r"|\{(?P<ref>[A-Za-z_][A-Za-z0-9_\-]*(?::[A-Za-z0-9_\-]+)?)\}")


@dataclass
class PlannedStage:
    spec: StageSpec
    command: Command
    config: Any                 # the validated config dataclass
    out: Path | None
    upstream: list[str]         # stage names referenced through placeholders


class _Resolver:
    """Expands ``${ENV}``, ``{stage}``, ``{work_dir}``, ``{builtin:NAME}`` and ``{{``/``}}``."""

    def __init__(self, work_dir: Path) -> None:
        self.outputs: dict[str, str] = {"work_dir": str(work_dir)}
        self._builtins: dict[str, str] = {}

    def builtin(self, name: str, where: str) -> str:
        if name not in BUILTINS:
            raise ConfigError(f"{where}: unknown '{{builtin:{name}}}' (known: {sorted(BUILTINS)})")
        if name not in self._builtins:
            self._builtins[name] = str(resolve_runner(BUILTINS[name])())
        return self._builtins[name]

    def __call__(self, value: Any, used: set[str], where: str) -> Any:
        if isinstance(value, str):
            def repl(m: re.Match) -> str:
                if m.group("env"):
                    if m.group("env") not in os.environ:
                        raise ConfigError(f"{where}: environment variable {m.group('env')} is not set")
                    return os.environ[m.group("env")]
                if m.group("open") or m.group("close"):
                    return m.group(0)[0]
                key = m.group("ref")
                if key.startswith("builtin:"):
                    return self.builtin(key.removeprefix("builtin:"), where)
                if key not in self.outputs:
                    raise ConfigError(f"{where}: '{{{key}}}' names no earlier stage (known: {sorted(self.outputs)})")
                used.add(key)
                return self.outputs[key]
            return _TOKEN.sub(repl, value)
        if isinstance(value, list):
            return [self(v, used, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self(v, used, f"{where}.{k}") for k, v in value.items()}
        return value


def output_key(command: Command) -> str | None:
    fields = command.config_cls.__dataclass_fields__
    return next((k for k in OUTPUT_KEYS if k in fields), None)


def plan(cfg: PipelineConfig) -> list[PlannedStage]:
    """Resolve placeholders and validate every stage's config before anything runs."""
    registry = {" ".join(c.path): c for c in all_commands()}
    work = Path(cfg.work_dir)
    resolve = _Resolver(work)
    planned = []
    for i, spec in enumerate(cfg.stages):
        where = f"stages[{i}]({spec.name})"
        if spec.command not in registry or spec.command == "pipeline":
            raise ConfigError(f"{where}.command: unknown command '{spec.command}' (known: {sorted(registry)})")
        command = registry[spec.command]
        raw = dict(spec.config)
        key = output_key(command)
        if key and not raw.get(key):
            raw[key] = str(work / spec.name)
        used: set[str] = set()
        resolved = resolve(raw, used, f"{where}.config")
        try:
            config = build_config(command.config_cls, None, resolved)
        except ConfigError as exc:
            raise ConfigError(f"{where}.config.{exc}") from None
        out = Path(resolved[key]) if key else None
        if out is not None and not is_inside(out, work):   # the pipeline deletes and rewrites its outputs
            raise ConfigError(f"{where}.config.{key}: {str(out)!r} is outside work_dir {str(work)!r}; "
                              "a pipeline only writes (and discards) inside its work_dir")
        resolve.outputs[spec.name] = str(out) if out else str(work / spec.name)
        used.discard("work_dir")
        planned.append(PlannedStage(spec, command, config, out, sorted(used)))
    return planned


def _local_inputs(config: Any, pipeline_outputs: list[Path]) -> list[Path]:
    """The existing local files and folders a config reads, learned from its field types
    (`lingraft.config.path_fields`): `Path` fields and the local paths of `ModelRef`/`DatasetRef`
    fields, never `OutputPath` fields or plain strings, and nothing inside this pipeline's
    outputs (their upstream identity stands for them)."""
    found: list[Path] = []
    for item in path_fields(config):
        if item.role == "output":
            continue
        for p in ref_paths(str(item.value)) if item.role == "ref" else [Path(item.value)]:
            if p.exists() and not any(is_inside(p, out) for out in pipeline_outputs) and p not in found:
                found.append(p)
    return found


def _params(config: Any) -> dict[str, Any]:
    """What a stage computes from: its config, less the fields marked runtime-only."""
    skip = {f.name for f in fields(config) if f.metadata.get(RUNTIME_ONLY)}
    return {k: v for k, v in to_dict(config).items() if k not in skip}


def _present(out: Path | None) -> bool:
    """The output of a finished run is still there (the ledger says finished; the user may have deleted it)."""
    return out is None or out.is_file() or (out.is_dir() and any(out.iterdir()))


def _discard(out: Path | None) -> None:
    if out is None or not out.exists():
        return
    log.info("discarding %s: written by this pipeline with other parameters", out)
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink()


@contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """One pipeline per work_dir: two would race on the ledger and on each other's outputs."""
    with open(work / ".pipeline.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LingraftError(f"{work}: another `lingraft pipeline` is running in this folder") from None
        yield


class Ledger:
    """``{stage: {fingerprint, state: started|finished, run_id, seconds, finished_at}}``, saved after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.input_hashes: dict[str, Any] = self.data.setdefault("_input_hashes", {})

    def entry(self, name: str) -> dict[str, Any]:
        return self.data.get(name) or {}

    def identity(self, name: str) -> str | None:
        """What downstream fingerprints see: the output's parameters and the run that wrote it."""
        e = self.entry(name)
        return f"{e['fingerprint']}:{e.get('run_id', '')}" if e and e.get("state", "finished") == "finished" else None

    def start(self, name: str, fingerprint: str) -> None:
        self.data[name] = {"fingerprint": fingerprint, "state": "started",
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def finish(self, name: str, seconds: float) -> None:
        self.data[name].update(state="finished", run_id=uuid.uuid4().hex[:12], seconds=round(seconds, 2),
                               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def hash_input(path: Path, cache: dict[str, Any]) -> str:
    """Content hash of a local input, remembered by (total size, newest mtime) across runs."""
    stat = [p.stat() for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    key = str(path.resolve())
    stamp = [sum(s.st_size for s in stat), max((s.st_mtime_ns for s in stat), default=0)]
    hit = cache.get(key)
    if hit and hit["stamp"] == stamp:
        return hit["sha256"]
    digest = sha256_tree(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    return digest


def fingerprint(stage: PlannedStage, ledger: Ledger, pipeline_outputs: list[Path]) -> str:
    params = _params(stage.config)
    inputs = {str(p): hash_input(p, ledger.input_hashes) for p in _local_inputs(stage.config, pipeline_outputs)}
    return sha256_text(json.dumps(
        {"command": stage.spec.command, "params": params, "inputs": inputs,
         "upstream": {u: ledger.identity(u) for u in stage.upstream}}, sort_keys=True, default=str))


def run_pipeline(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Run or skip every stage; print the summary table (also when a stage fails) and return its rows."""
    stages = plan(cfg)
    work = Path(cfg.work_dir)
    pipeline_outputs = [s.out.resolve() for s in stages if s.out]
    rows: list[StageRow] = []
    try:
        if cfg.dry_run:
            _dry_run(stages, cfg, Ledger(work / LEDGER_NAME), pipeline_outputs, rows)
            return [r.to_json() for r in rows]
        work.mkdir(parents=True, exist_ok=True)
        with _exclusive(work):
            ledger = Ledger(work / LEDGER_NAME)
            for stage in _selected(stages, cfg):
                row = StageRow(stage.spec.name, "disabled", 0.0, str(stage.out or ""))
                rows.append(row)     # before running, so a failing stage shows in the table
                if stage.spec.enabled:
                    _run_stage(stage, row, ledger, pipeline_outputs, forced=stage.spec.name in cfg.force)
            ledger.save()
    finally:
        if rows:
            print(format_table(rows), flush=True)
    return [r.to_json() for r in rows]


def _selected(stages: list[PlannedStage], cfg: PipelineConfig) -> list[PlannedStage]:
    names = [s.spec.name for s in stages]
    return stages[:names.index(cfg.until) + 1] if cfg.until else stages


def _decide(stage: PlannedStage, ledger: Ledger, pipeline_outputs: list[Path], forced: bool) -> tuple[str, str]:
    """(skip | resume | run, fingerprint) by the rules in the module docstring."""
    fp = fingerprint(stage, ledger, pipeline_outputs)
    entry = ledger.entry(stage.spec.name)
    same = entry.get("fingerprint") == fp and not forced
    state = entry.get("state", "finished")
    if same and state == "finished" and _present(stage.out):
        return "skip", fp
    return ("resume" if same and state == "started" else "run"), fp


def _dry_run(stages: list[PlannedStage], cfg: PipelineConfig, ledger: Ledger, pipeline_outputs: list[Path],
             rows: list[StageRow]) -> None:
    """What a real run would do, writing nothing. A stage reading one that would run would run too."""
    pending: set[str] = set()
    for stage in _selected(stages, cfg):
        row = StageRow(stage.spec.name, "disabled", 0.0, str(stage.out or ""))
        rows.append(row)
        if not stage.spec.enabled:
            continue
        action, _ = _decide(stage, ledger, pipeline_outputs, forced=stage.spec.name in cfg.force)
        if action == "skip" and pending.intersection(stage.upstream):
            action = "run"
        if action != "skip":
            pending.add(stage.spec.name)
        row.status = f"would {action}"
        row.metric = key_metric(stage.spec.command, stage.out, stage.spec.metric) if action == "skip" else ""


def _run_stage(stage: PlannedStage, row: StageRow, ledger: Ledger, pipeline_outputs: list[Path],
               forced: bool) -> None:
    name, out = stage.spec.name, stage.out
    action, fp = _decide(stage, ledger, pipeline_outputs, forced)
    if action == "skip":
        log.info("stage %s: up to date, skipped", name)
        row.status = "skipped"
    else:
        if ledger.entry(name) and action == "run":
            _discard(out)
        row.status = "resumed" if action == "resume" else "ran"
        log.info("stage %s: %s lingraft %s", name, "resuming" if action == "resume" else "running", stage.spec.command)
        ledger.start(name, fp)
        t0 = time.perf_counter()
        try:
            resolve_runner(stage.command.runner)(stage.config)
        except BaseException:     # KeyboardInterrupt too: the ledger keeps the stage as started
            row.status, row.seconds = "failed", round(time.perf_counter() - t0, 2)
            raise
        row.seconds = round(time.perf_counter() - t0, 2)
        ledger.finish(name, row.seconds)
    row.metric = key_metric(stage.spec.command, out, stage.spec.metric)

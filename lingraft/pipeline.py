"""`lingraft pipeline`: run registered stage commands in order, skipping finished ones.

A stage is skipped when its output folder holds a manifest and the ledger
(``<work_dir>/pipeline_ledger.json``) records the same fingerprint for it: a hash of the
command, its fully resolved config, the fingerprints of the stages it reads from, and the
content of any local input files it names (cached by size and mtime so multi-GB inputs are
hashed once). Otherwise the stage runs; stages that support it resume their own partial work.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lingraft.atomic import write_json
from lingraft.cli import Command, _commands, resolve_runner
from lingraft.config import ConfigError, build_config, to_dict
from lingraft.hashing import sha256_text, sha256_tree
from lingraft.log import get_logger
from lingraft.manifest import MANIFEST_NAME
from lingraft.pipeline_config import PipelineConfig, StageSpec

log = get_logger("pipeline")
LEDGER_NAME = "pipeline_ledger.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: str, where: str) -> str:
    """``${VAR}`` from the environment (e.g. ${LINGRAFT_SHARED}); unset is an error, not ''."""
    def repl(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{where}: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]
    return _ENV_VAR.sub(repl, value)


@dataclass
class PlannedStage:
    spec: StageSpec
    command: Command
    config: Any                 # the validated config dataclass
    out: Path | None
    upstream: list[str]         # stage names referenced through placeholders


def _substitute(value: Any, outputs: dict[str, str], used: set[str], where: str) -> Any:
    if isinstance(value, str):
        value = _expand_env(value, where)

        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key not in outputs:
                raise ConfigError(f"{where}: '{{{key}}}' names no earlier stage (known: {sorted(outputs)})")
            used.add(key)
            return outputs[key]
        return _PLACEHOLDER.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, outputs, used, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, outputs, used, f"{where}.{k}") for k, v in value.items()}
    return value


def plan(cfg: PipelineConfig) -> list[PlannedStage]:
    """Resolve placeholders and validate every stage's config before anything runs."""
    registry = {" ".join(c.path): c for c in _commands()}
    work = Path(cfg.work_dir)
    outputs: dict[str, str] = {"work_dir": str(work)}
    planned = []
    for i, spec in enumerate(cfg.stages):
        where = f"stages[{i}]({spec.name})"
        if spec.command not in registry or spec.command == "pipeline":
            raise ConfigError(f"{where}.command: unknown command '{spec.command}' (known: {sorted(registry)})")
        command = registry[spec.command]
        raw = dict(spec.config)
        has_out = "out" in {f for f in command.config_cls.__dataclass_fields__}
        if has_out and not raw.get("out"):
            raw["out"] = str(work / spec.name)
        used: set[str] = set()
        resolved = _substitute(raw, outputs, used, f"{where}.config")
        try:
            config = build_config(command.config_cls, None, resolved)
        except ConfigError as exc:
            raise ConfigError(f"{where}.config.{exc}") from None
        out = Path(resolved["out"]) if has_out else None
        outputs[spec.name] = str(out) if out else str(work / spec.name)
        used.discard("work_dir")
        planned.append(PlannedStage(spec, command, config, out, sorted(used)))
    return planned


class _InputHasher:
    """Content hashes of local files named in configs, cached by (size, mtime)."""

    def __init__(self, cache: dict[str, Any]):
        self.cache = cache

    def __call__(self, path: Path) -> str:
        stat = [p.stat() for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
        key = str(path.resolve())
        stamp = [sum(s.st_size for s in stat), max(s.st_mtime_ns for s in stat)]
        hit = self.cache.get(key)
        if hit and hit["stamp"] == stamp:
            return hit["sha256"]
        digest = sha256_tree(path)
        self.cache[key] = {"stamp": stamp, "sha256": digest}
        return digest


def _local_inputs(config_json: Any, own_out: Path | None, stage_outputs: set[str]) -> list[Path]:
    """Existing local paths named in a config, other than outputs of this pipeline."""
    found: list[Path] = []

    def walk(v: Any) -> None:
        if isinstance(v, str) and v and len(v) < 4096:
            p = Path(v)
            if p.exists() and str(p) not in stage_outputs and (own_out is None or p.resolve() != own_out.resolve()):
                found.append(p)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(config_json)
    return found


def _finished(out: Path | None) -> bool:
    """A folder output is finished once its manifest exists (written last); a file output once it exists."""
    if out is None:
        return True
    return (out / MANIFEST_NAME).exists() if out.is_dir() else out.is_file()


def run_pipeline(cfg: PipelineConfig) -> list[dict[str, Any]]:
    stages = plan(cfg)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ledger_path = work / LEDGER_NAME
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    hasher = _InputHasher(ledger.setdefault("_input_hashes", {}))
    stage_outputs = {str(s.out) for s in stages if s.out}
    fingerprints: dict[str, str] = {}
    summary = []
    for stage in stages:
        name = stage.spec.name
        if not stage.spec.enabled:
            summary.append({"stage": name, "status": "disabled", "seconds": 0.0, "out": str(stage.out or "")})
            continue
        params = to_dict(stage.config)
        inputs = {str(p): hasher(p) for p in _local_inputs(params, stage.out, stage_outputs)}
        fingerprint = sha256_text(json.dumps(
            {"command": stage.spec.command, "params": params, "inputs": inputs,
             "upstream": {u: fingerprints.get(u) for u in stage.upstream}}, sort_keys=True, default=str))
        fingerprints[name] = fingerprint
        done = _finished(stage.out)
        if done and ledger.get(name, {}).get("fingerprint") == fingerprint and name not in cfg.force:
            log.info("stage %s: up to date, skipped", name)
            summary.append({"stage": name, "status": "skipped", "seconds": 0.0, "out": str(stage.out or "")})
        else:
            log.info("stage %s: lingraft %s", name, stage.spec.command)
            t0 = time.perf_counter()
            resolve_runner(stage.command.runner)(stage.config)
            seconds = time.perf_counter() - t0
            ledger[name] = {"fingerprint": fingerprint, "seconds": round(seconds, 2),
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json(ledger_path, ledger)
            summary.append({"stage": name, "status": "ran", "seconds": round(seconds, 2), "out": str(stage.out or "")})
        if cfg.until == name:
            break
    write_json(ledger_path, ledger)
    _print_summary(summary)
    return summary


def _print_summary(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["stage"]) for r in rows)
    print(f"{'stage':<{width}}  {'status':<8}  {'seconds':>8}  output")
    for r in rows:
        print(f"{r['stage']:<{width}}  {r['status']:<8}  {r['seconds']:>8.1f}  {r['out']}")

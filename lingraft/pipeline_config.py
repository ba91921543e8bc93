"""Configuration of `lingraft pipeline` (light module: no heavy imports)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingraft.config import require


@dataclass
class StageSpec:
    """One step: a registered command and its config.

    String values may name earlier stages' outputs as ``{stage_name}`` (its output folder or
    file), the pipeline folder as ``{work_dir}``, a built-in resource as ``{builtin:NAME}``
    (e.g. ``{builtin:smollm2}``, fetched on first use) and environment variables as
    ``${VAR}``; ``{{`` and ``}}`` stand for literal braces (e.g. a prompt's ``{{text}}``).
    A stage's output key (``out`` or ``out_dir``) defaults to ``{work_dir}/<name>``.
    """
    name: str
    command: str                        # e.g. "prep clean", "tokenizer train", "init"
    config: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    metric: str | None = None           # dotted key of the output's manifest (or result JSON) for the summary

    def __post_init__(self) -> None:
        require(bool(self.name) and "{" not in self.name and ":" not in self.name
                and "/" not in self.name and self.name not in (".", ".."), "name",
                f"a stage name must be non-empty without braces, colons or '/' and not '.' or '..' "
                f"(it names a folder in work_dir), got {self.name!r}")


@dataclass
class PipelineConfig:
    work_dir: Path = field(metadata={"help": "folder that holds every stage's output and the ledger"})
    stages: list[StageSpec] = field(metadata={"help": "the steps, in order (in a --config file)"})
    force: list[str] = field(default_factory=list, metadata={
        "help": "stage names to rerun from scratch even when up to date (their outputs are discarded first)"})
    until: str | None = field(default=None, metadata={"help": "stop after this stage"})
    dry_run: bool = field(default=False, metadata={
        "help": "validate every stage and print what would run, skip or resume, without running or writing anything"})

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        require(bool(names), "stages", "a pipeline needs at least one stage")
        dupes = sorted({n for n in names if names.count(n) > 1})
        require(not dupes, "stages", f"duplicate stage names: {dupes}")
        require("work_dir" not in names, "stages", "'work_dir' is reserved for the pipeline folder")
        for key, values in (("force", self.force), ("until", [self.until] if self.until else [])):
            unknown = [v for v in values if v not in names]
            require(not unknown, key, f"unknown stage(s) {unknown}; stages are {names}")

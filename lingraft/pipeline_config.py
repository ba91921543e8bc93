"""Configuration of `lingraft pipeline` (light module: no heavy imports)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lingraft.config import require


@dataclass
class StageSpec:
    """One step: a registered command and its config.

    String values may name earlier stages' outputs as ``{stage_name}`` (its output folder)
    and the pipeline folder as ``{work_dir}``. A stage's ``out`` defaults to
    ``{work_dir}/<name>`` when its command has an ``out`` key.
    """
    name: str
    command: str                        # e.g. "prep clean", "tokenizer train", "init"
    config: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass
class PipelineConfig:
    work_dir: str = field(metadata={"help": "folder that holds every stage's output and the ledger"})
    stages: list[StageSpec] = field(default_factory=list)
    force: list[str] = field(default_factory=list, metadata={"help": "stage names to rerun even when up to date"})
    until: str | None = field(default=None, metadata={"help": "stop after this stage"})

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        require(bool(names), "stages", "a pipeline needs at least one stage")
        dupes = sorted({n for n in names if names.count(n) > 1})
        require(not dupes, "stages", f"duplicate stage names: {dupes}")
        for key, values in (("force", self.force), ("until", [self.until] if self.until else [])):
            unknown = [v for v in values if v not in names]
            require(not unknown, key, f"unknown stage(s) {unknown}; stages are {names}")

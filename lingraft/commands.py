"""CLI commands that span stages (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.cli import Command
from lingraft.pipeline_config import PipelineConfig

COMMANDS = [
    Command(path=("pipeline",), config_cls=PipelineConfig, runner="lingraft.pipeline:run_pipeline",
            help="run stages in order from one YAML, skipping those whose inputs and parameters are unchanged"),
]

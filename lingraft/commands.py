"""CLI commands that span stages (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.registry import Command
from lingraft.pipeline_config import PipelineConfig
from lingraft.random_model import RandomModelConfig

COMMANDS = [
    Command(path=("pipeline",), config_cls=PipelineConfig, runner="lingraft.pipeline:run_pipeline",
            help="run stages in order from one YAML, skipping those whose inputs and parameters are unchanged"),
    Command(path=("model", "random"), config_cls=RandomModelConfig, runner="lingraft.random_model:run_random_model",
            help="a randomly initialised model (any transformers model type) around a tokenizer: smoke tests, debugging"),
]

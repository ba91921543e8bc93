"""CLI commands of the training stage (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.registry import Command
from lingraft.train.config import TrainConfig
from lingraft.train.export import ExportConfig

TRAIN = Command(path=("train",), config_cls=TrainConfig, runner="lingraft.train.launcher:run",
                help="train the embedding tables (or more) of a checkpoint; picks the launcher from the config")
EXPORT = Command(path=("export",), config_cls=ExportConfig, runner="lingraft.train.export:run",
                 help="turn a training checkpoint (ZeRO, FSDP or local) into a Hugging Face folder")

COMMANDS = [TRAIN, EXPORT]

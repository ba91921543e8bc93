"""CLI commands of the propagation stage (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.cli import Command
from propagate.config import PropagateConfig

COMMANDS: list = []

COMMANDS.append(Command(
    path=("propagate",), config_cls=PropagateConfig, runner="propagate.propagate_stage:run_propagate",
    help="LEP: put an adapted base model's vocabulary into an instruct sibling "
         "(swap, overlap or conversion of the embedding tables)"))

# Hydra: several vocabularies and heads over one body
from propagate.hydra_config import GenerateConfig, HydraExportConfig, HydraPlainConfig  # noqa: E402

COMMANDS.append(Command(
    path=("hydra", "export"), config_cls=HydraExportConfig, runner="propagate.hydra_export:run_hydra_export",
    help="stack two models sharing one body into a Hydra model: both input vocabularies, one head per language"))

COMMANDS.append(Command(
    path=("hydra", "plain"), config_cls=HydraPlainConfig, runner="propagate.hydra_export:run_hydra_plain",
    help="export one language of a Hydra model as a plain Hugging Face checkpoint"))

COMMANDS.append(Command(
    path=("generate",), config_cls=GenerateConfig, runner="propagate.generate:run_generate",
    help="generate from a Hydra model (--head picks the output language) or a plain Hugging Face model"))

"""The command registry: what each `lingraft` subcommand is, and where its parts live.

A leaf module: it imports no stage. Each stage lists its `Command`s in its own
``commands.py`` (importing `Command` from here), and `all_commands` finds those lists by
module name, so neither the CLI nor the pipeline depends on a stage at import time and no
stage depends on the CLI.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Stage command lists, in the order `lingraft --help` shows them.
COMMAND_MODULES = (
    "lingraft.vocabulary.commands",
    "lingraft.data_prep.commands",
    "lingraft.train.commands",
    "lingraft.propagate.commands",
    "lingraft.commands",
    "lingraft.evaluation.commands",
)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]          # e.g. ("tokenizer", "stats")
    config_cls: type
    runner: str                    # "module:function", imported only when the command runs
    help: str
    aliases: dict[str, str] = field(default_factory=dict)  # extra flag -> field name


def all_commands() -> list[Command]:
    return [cmd for module in COMMAND_MODULES for cmd in importlib.import_module(module).COMMANDS]


def resolve_runner(spec: str) -> Callable[[Any], Any]:
    """The function a ``"module:function"`` runner string names."""
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)

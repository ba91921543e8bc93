"""CLI commands of the data-prep stage (registered by lingraft.cli)."""
from __future__ import annotations

COMMANDS: list = []

"""CLI commands of the vocabulary stage (registered by lingraft.cli)."""
from __future__ import annotations

COMMANDS: list = []

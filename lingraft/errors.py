"""Exceptions that the CLI reports as one line (no traceback)."""
from __future__ import annotations


class LingraftError(RuntimeError):
    """An expected failure: bad input, a missing file, an incompatible artifact."""


class DataError(LingraftError):
    """A bad record in strict mode; the message names file and line."""

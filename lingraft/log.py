"""Logging set-up: one format for every stage, rank-aware under distributed launchers."""
from __future__ import annotations

import logging
import os
import sys


def _rank() -> int:
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


class _CurrentStderr:
    """Writes to whatever sys.stderr is at emit time, not at set-up time: a caller that swaps
    stderr (pytest capture, a notebook) and closes the old one must not break later log lines."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: int = logging.INFO) -> None:
    rank = _rank()
    fmt = "%(asctime)s %(levelname).1s [%(name)s" + (f" r{rank}" if rank else "") + "] %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=_CurrentStderr(), force=True)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr, silenced off rank 0 and when LINGRAFT_NO_PROGRESS is set."""
    from tqdm.auto import tqdm
    disable = _rank() != 0 or bool(os.environ.get("LINGRAFT_NO_PROGRESS"))
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, disable=disable, **kwargs)

#!/usr/bin/env python3
"""Training entry point for every launcher; the same code and YAML on one CPU or many GPUs.

    deepspeed [--hostfile H] launch/train.py --config cfg.yaml
    mpirun -np 16 python launch/train.py --config cfg.yaml
    python launch/train.py --config cfg.yaml --backend local

Any config key can be overridden: ``--max-steps 100`` or ``--set optim.lr=3e-4``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lingraft.cli import _add_config_flags, config_from_args  # noqa: E402
from lingraft.config import ConfigError  # noqa: E402
from lingraft.errors import LingraftError  # noqa: E402
from lingraft.log import setup_logging  # noqa: E402
from train.commands import TRAIN  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=TRAIN.help)
    _add_config_flags(parser, TRAIN)
    # The deepspeed launcher appends --local_rank; the rank is read from LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(TRAIN, args)
    except ConfigError as exc:
        print(f"launch/train.py: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    from train.loop import train
    try:
        train(cfg)
    except LingraftError as exc:
        print(f"launch/train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

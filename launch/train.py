#!/usr/bin/env python3
"""Training entry point for every launcher; the same code and YAML on one CPU or many GPUs.

    deepspeed [--hostfile H] launch/train.py --config cfg.yaml
    torchrun --standalone --nproc_per_node 8 launch/train.py --config cfg.yaml --backend fsdp
    mpirun -np 16 python launch/train.py --config cfg.yaml
    python launch/train.py --config cfg.yaml --backend local

Any config key can be overridden: ``--max-steps 100`` or ``--set optim.lr=3e-4``.
"""
from __future__ import annotations

import argparse
import sys


from lingraft.cli import _add_config_flags, run_command  # noqa: E402
from lingraft.train.commands import TRAIN  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=TRAIN.help)
    _add_config_flags(parser, TRAIN)
    # The deepspeed launcher appends --local_rank; the rank is read from LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from lingraft.train.loop import train
    return run_command(TRAIN, args, "launch/train.py", runner=train)


if __name__ == "__main__":
    sys.exit(main())

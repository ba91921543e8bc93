"""The training entry point every rank runs; the same code and YAML on one CPU or many GPUs.

    python -m lingraft.train.entry --config cfg.yaml --backend local
    python -m torch.distributed.run --standalone --nproc_per_node 8 -m lingraft.train.entry --config cfg.yaml
    python -m deepspeed.launcher.runner [--hostfile H] --module lingraft.train.entry --config cfg.yaml
    mpirun -np 16 python -m lingraft.train.entry --config cfg.yaml

`lingraft train` builds these commands (train/launcher.py) with the interpreter it runs in,
so no launcher has to be on PATH. Any config key can be overridden: ``--max-steps 100`` or
``--set optim.lr=3e-4``.
"""
from __future__ import annotations

import argparse

from lingraft.cli import add_config_flags, run_command
from lingraft.train.commands import TRAIN

PROG = "python -m lingraft.train.entry"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=TRAIN.help)
    add_config_flags(parser, TRAIN)
    # The deepspeed launcher appends --local_rank; the rank is read from LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from lingraft.train.dist import shutdown
    from lingraft.train.loop import train
    code = run_command(TRAIN, args, prog, runner=train)
    shutdown(wait_for_peers=code == 0)   # a failed rank must not wait for peers that may never come
    return code


if __name__ == "__main__":
    from lingraft.train.dist import exit_rank
    exit_rank(main())

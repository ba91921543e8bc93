#!/usr/bin/env python3
"""Kept so that `deepspeed launch/train.py --config cfg.yaml` (and torchrun, mpirun, Slurm
templates) keep working; the entry point itself is `python -m lingraft.train.entry`."""
from lingraft.train.dist import exit_rank
from lingraft.train.entry import main

if __name__ == "__main__":
    exit_rank(main(prog="launch/train.py"))

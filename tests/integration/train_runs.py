"""Several training runs, one after another, in one set of launched processes.

    deepspeed --num_gpus 2 tests/integration/train_runs.py a.yaml b.yaml
    torchrun --standalone --nproc_per_node 2 tests/integration/train_runs.py a.yaml b.yaml

Each launch costs every rank a multi-second import of torch/transformers(/deepspeed) on
a loaded 2-core CI machine; the runs themselves take a second or two. Sharing one process
group between the runs keeps the multi-process tests within their time budget. The runs
are full `train()` calls, so a later one resumes from an earlier one's checkpoint exactly
as a relaunch would (fresh model, engine and data stream; state read from disk).
"""
from __future__ import annotations

import sys
from pathlib import Path



def main(argv: list[str]) -> None:
    from lingraft.config import build_config
    from lingraft.log import setup_logging
    from lingraft.train.config import TrainConfig
    from lingraft.train.dist import exit_rank
    from lingraft.train.loop import train
    setup_logging()
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment.
    for path in (a for a in argv if not a.startswith("--local_rank")):
        train(build_config(TrainConfig, Path(path)))
    exit_rank(0)


if __name__ == "__main__":
    main(sys.argv[1:])

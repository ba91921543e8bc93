"""Process-group set-up for every launcher: deepspeed, torchrun, mpirun/srun, or none.

deepspeed and torchrun export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; under mpirun or srun
only the MPI runtime knows the ranks, and DeepSpeed's MPI discovery (mpi4py) fills the
same variables. Joining the group has a deadline: an unreachable master or a host that
never starts becomes a one-line error after `timeout_s`, never a silent hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from lingraft.errors import LingraftError

_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or torch.distributed.is_initialized()


def launched_distributed() -> bool:
    return "WORLD_SIZE" in os.environ or any(v in os.environ for v in _MPI_VARS)


def init_distributed(timeout_s: int, use_cuda: bool) -> DistInfo:
    """Join the process group if a launcher started us; a plain `python` run stays single."""
    if not launched_distributed():
        return DistInfo(0, 1, 0)
    timeout_s = int(os.environ.get("LINGRAFT_DIST_TIMEOUT_S", timeout_s))
    import deepspeed
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", 0))))
    try:
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True,
                                   timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, TimeoutError) as exc:  # torch raises DistStoreError / DistNetworkError (RuntimeErrors)
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise LingraftError(f"rank {os.environ.get('RANK', '?')}: could not join the process group at {where} "
                            f"within {timeout_s}s ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                            "check MASTER_ADDR/MASTER_PORT, the hostfile and that every host started") from None
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", 0)))


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum small scalars over ranks (one collective); identity on a single process."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

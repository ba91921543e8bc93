"""Process-group set-up for every launcher: deepspeed, torchrun, mpirun/srun, or none.

deepspeed and torchrun export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; under mpirun or srun
only the MPI runtime knows the ranks, and DeepSpeed's MPI discovery (mpi4py) fills the
same variables, whichever backend trains. Joining the group has a deadline: an
unreachable master or a host that never starts becomes a one-line error after
`timeout_s`, never a silent hang.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch

from lingraft.errors import LingraftError

_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
SHM_OPT_IN = "LINGRAFT_DS_SHM_COMM"


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


def skip_deepspeed_shm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory allreduce op on the CPU accelerator.

    On the CPU accelerator, `deepspeed.comm`'s TorchBackend JIT-compiles the C++ extension
    `deepspeed_shm_comm` when the first process group starts (2-4 minutes on a small
    machine), although lingraft's torch AdamW needs no DeepSpeed op and gloo carries the
    collectives. The op only speeds up CPU allreduce within one node, which matters for
    real CPU training, not for tests or GPU runs: set LINGRAFT_DS_SHM_COMM=1 to keep it.
    DeepSpeed skips the build itself when its probe finds the op incompatible; this says
    the same thing through the same table.
    """
    if os.environ.get(SHM_OPT_IN) == "1":
        return
    from deepspeed.accelerator import get_accelerator
    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        # The dict is probed once per process and read by deepspeed.comm.torch.build_shm_op.
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _current() -> DistInfo:
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(timeout_s: int, use_cuda: bool, engine: str = "deepspeed", port: int = 29500) -> DistInfo:
    """Join the process group if a launcher started us; a plain `python` run stays single.

    `engine` picks who starts the group: DeepSpeed's communication layer for the deepspeed
    backend, plain `torch.distributed` otherwise (FSDP2 needs nothing else). Under
    mpirun/srun the ranks come from mpi4py first (DeepSpeed's MPI discovery), with the
    master port from MASTER_PORT or `port`.
    """
    if torch.distributed.is_initialized():   # a further run in the same processes (tests, benchmarks)
        return _current()
    if not launched_distributed():
        return DistInfo(0, 1, 0)
    timeout_s = int(os.environ.get("LINGRAFT_DIST_TIMEOUT_S", timeout_s))
    if "RANK" not in os.environ:              # mpirun/srun: only the MPI runtime knows the ranks
        from deepspeed.comm.comm import mpi_discovery
        mpi_discovery(distributed_port=int(os.environ.get("MASTER_PORT", port)), verbose=False)
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        if engine == "deepspeed":
            skip_deepspeed_shm_build()
            import deepspeed
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, timeout=timeout)
        else:
            torch.distributed.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:  # torch raises DistStoreError / DistNetworkError (RuntimeErrors)
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise LingraftError(f"rank {os.environ.get('RANK', '?')}: could not join the process group at {where} "
                            f"within {timeout_s}s ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                            "check MASTER_ADDR/MASTER_PORT, the hostfile and that every host started") from None
    return _current()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum small scalars over ranks (one collective); identity on a single process."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def shutdown(wait_for_peers: bool = True) -> None:
    """Close the process group before the interpreter exits: a gloo worker thread still running
    during finalisation can abort the rank ("terminate called without an active exception")."""
    if torch.distributed.is_initialized():
        if wait_for_peers:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End a process with `code` once its work is written: its group is shut first (`shutdown`,
    waiting for peers only when `code` is 0; nothing to do if the caller shut it).

    A rank that a launcher started leaves without the interpreter's finalisation. There, objects
    that still hold gloo's worker threads (a DeepSpeed engine's groups) are destroyed in no set
    order, and a rank whose work is done and written can abort at random ("terminate called
    without an active exception", exit 250 or 134), failing a run that succeeded. Logs and
    streams are flushed first, and MPI, if mpi4py started it, is finalised (mpirun counts a rank
    that leaves without `MPI_Finalize` as failed). A process no launcher started exits normally."""
    shutdown(wait_for_peers=code == 0)
    if not launched_distributed():
        sys.exit(code)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""A faster malloc for CPU-bound worker processes (the packer's tokenizers), and their core budget.

Hugging Face `tokenizers` allocates a few small objects per pre-token; under glibc's malloc
that is about 40% of a tokenizer's CPU time, and more in a single-threaded process. On
RusLit, mimalloc cut the tokenizer's CPU time by 14% with two threads and by 27% on one
(jemalloc: 11% with two; BENCHMARKS.md, "Packing"). A running process cannot change its
allocator, so the library is preloaded into worker processes as they are spawned:
`LD_PRELOAD` in the environment they inherit. Linux only; elsewhere, and when no such
library is installed, workers keep the system allocator.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lingraft.errors import LingraftError

# Tried in this order by "auto": the first the dynamic linker knows is used.
ALLOCATORS = ("mimalloc", "jemalloc")
# Ranks of this job on this node, as the MPI launchers (Open MPI, MPICH/Hydra) and Slurm tell them.
_LOCAL_RANKS_ENV = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def allocator_setting_problem(setting: str) -> str | None:
    """Why `setting` is not a usable `allocator` value (None when it is): checked with the config,
    before any stage runs."""
    if setting in ("auto", "system"):
        return None
    if not Path(setting).is_file():
        return f"{setting!r}: no such file (use auto, system or a path to a malloc library)"
    if any(c in setting for c in " :\t\n"):   # LD_PRELOAD splits on these
        return f"{setting!r}: a path for LD_PRELOAD may not contain spaces or colons"
    return None


def find_allocator(setting: str) -> str | None:
    """The library to preload for `setting`: "auto" (the first of `ALLOCATORS` installed, else
    None), "system" (None), or a path to a shared library."""
    problem = allocator_setting_problem(setting)
    if problem:
        raise LingraftError(f"allocator {problem}")
    if setting == "system":
        return None
    if setting == "auto":
        if not sys.platform.startswith("linux"):
            return None
        for name in ALLOCATORS:
            # A soname (libmimalloc.so.2): the dynamic linker resolves it through its own cache,
            # exactly as it would for a library the program was linked with.
            soname = ctypes.util.find_library(name)
            if soname:
                return soname
        return None
    return str(Path(setting).resolve())


def usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cores_per_local_rank(local_ranks: int | None = None) -> int:
    """This rank's share of its cores when `local_ranks` ranks of one job share a node unbound
    (each would otherwise size its worker pool for the whole node). None: as the launcher's
    environment says, for a process that has no MPI communicator to ask."""
    if local_ranks is None:
        told = [os.environ.get(name, "") for name in _LOCAL_RANKS_ENV]
        local_ranks = next((int(v) for v in told if v.isdigit() and int(v) > 0), 1)
    cores = usable_cores()
    # A rank bound to its own cores (mpirun --bind-to) already sees only them.
    return max(1, cores // local_ranks) if cores >= (os.cpu_count() or cores) else cores


@contextmanager
def preloaded(library: str | None) -> Iterator[None]:
    """Processes spawned inside this block preload `library` (None: changes nothing). The
    environment is process-wide, so spawn the workers here and nothing else."""
    if not library:
        yield
        return
    before = os.environ.get("LD_PRELOAD")
    os.environ["LD_PRELOAD"] = f"{library} {before}" if before else library
    try:
        yield
    finally:
        if before is None:
            del os.environ["LD_PRELOAD"]
        else:
            os.environ["LD_PRELOAD"] = before


def settle_preload(library: str | None, label: str) -> None:
    """In a spawned worker: warn when `library` did not load (the dynamic linker only writes to
    stderr), and take it out of the environment so that processes the worker starts do not inherit it."""
    if not library:
        return
    if not mapped_library(library):
        print(f"{label} {os.getpid()}: allocator {library} was not preloaded; using the system malloc",
              file=sys.stderr, flush=True)
    entries = [e for e in os.environ.get("LD_PRELOAD", "").split() if e != library]
    if entries:
        os.environ["LD_PRELOAD"] = " ".join(entries)
    else:
        os.environ.pop("LD_PRELOAD", None)


def mapped_library(library: str) -> str | None:
    """The path of `library` (a soname or path) if this process has it mapped, else None."""
    name = Path(library).name
    real = Path(library).resolve() if "/" in library else None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)   # address perms offset dev inode [path]
                if len(fields) < 6:
                    continue
                path = Path(fields[5].strip())
                # Maps name the file itself: libmimalloc.so.2.0 for the soname libmimalloc.so.2.
                if path.name == name or path.name.startswith(name + ".") or path == real:
                    return str(path)
    except OSError:
        return None
    return None

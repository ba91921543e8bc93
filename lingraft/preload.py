"""A faster malloc for CPU-bound worker processes (the packer's tokenizers).

Hugging Face `tokenizers` allocates a few small objects per pre-token; under glibc's malloc
that is about 40% of a tokenizer's CPU time, and more in a single-threaded process. mimalloc
(or jemalloc) cuts the tokenizer's CPU by 15-25% (BENCHMARKS.md, "Packing"). A running
process cannot change its allocator, so the library is preloaded into worker processes as
they are spawned: `LD_PRELOAD` in the environment they inherit. Linux only; elsewhere, and
when no such library is installed, workers keep the system allocator.
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


def find_allocator(setting: str) -> str | None:
    """The library to preload for `setting`: "auto" (the first of `ALLOCATORS` installed, else
    None), "system" (None), or a path to a shared library (which must exist)."""
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
    if not Path(setting).is_file():
        raise LingraftError(f"allocator {setting!r}: no such file (use auto, system or a path to a malloc library)")
    return str(Path(setting).resolve())


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


def mapped_library(library: str) -> str | None:
    """The path of `library` (a soname or path) if this process has it mapped, else None: the
    dynamic linker only warns on stderr when a preload fails."""
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

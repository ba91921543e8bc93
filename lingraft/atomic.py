"""Atomic writes: a reader never sees a half-written file or folder.

Files are written to a temporary sibling, flushed and fsync'ed, then renamed into place;
folders are assembled under a temporary name, fsync'ed file by file, and renamed whole. A crash leaves at most a
`.tmp-*` entry behind, which later runs ignore; the next `atomic_dir` write of the same
output removes it once its writer is gone (`sweep_dead_writers`; files are many and small,
and stages that write many clear their folder with `clean_stale_tmp`). A write that runs out of disk space
becomes a one-line LingraftError, with the previous version of the output untouched.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path, PurePath
from typing import Any, Iterator

from lingraft.errors import LingraftError

TMP_PREFIX = ".tmp-"
# A full disk, an exhausted quota, or a file-size limit (ulimit -f, with SIGXFSZ ignored).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from (torch wraps the OSError), is a full disk."""
    return any(isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS for e in _chain(exc))


def no_space_error(path: str | Path, exc: BaseException) -> LingraftError:
    """The one-line error for an output that did not fit; the caller has kept the old one intact."""
    reason = next((e.strerror for e in _chain(exc) if isinstance(e, OSError) and e.strerror), "no space")
    return LingraftError(f"{path}: out of disk space while writing ({reason}); nothing was replaced, "
                         "the previous version (if any) is intact. Free space and rerun.")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up (entries before their parent).

    For folders written by other code (torch.save, DeepSpeed, DCP) before an atomic rename
    publishes them: without it a crash, or another node of a shared filesystem, can see the
    renamed folder with files still empty or missing.
    """
    folders = []
    for current, _, files in os.walk(folder):
        folders.append(Path(current))
        for name in files:
            path = Path(current) / name
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for path in reversed(folders):
        fsync_dir(path)


def _tmp_prefix(path: Path) -> str:
    """`.tmp-<name>.<host>-<pid>.`: who is writing, so a later run can tell a crashed writer's leftovers."""
    return f"{TMP_PREFIX}{path.name}.{socket.gethostname()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's live process
        return True
    return True


def sweep_dead_writers(path: Path) -> int:
    """Remove temporary siblings of `path` left by writers on this host that no longer run (a
    SIGKILL, an OOM kill): without this, every crash of a multi-GB stage leaves its size behind.
    Writers on other hosts (a shared filesystem) and live ones are left alone. Returns how many."""
    head = f"{TMP_PREFIX}{path.name}.{socket.gethostname()}-"
    removed = 0
    if not path.parent.is_dir():
        return 0
    for entry in path.parent.iterdir():
        pid = entry.name[len(head):].split(".", 1)[0] if entry.name.startswith(head) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except Exception as exc:
        if out_of_space(exc) and not isinstance(exc, LingraftError):
            raise no_space_error(path, exc) from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """`open()` whose result appears at `path` only if the block completes."""
    if "encoding" not in kwargs and "b" not in mode:
        kwargs["encoding"] = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def _json_path(value: Any) -> str:
    """Config path fields are `Path`s: JSON holds them as strings. Anything else still fails."""
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_json(path: str | Path, data: Any) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=2, sort_keys=False, default=_json_path)
        fh.write("\n")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output already exists")
    sweep_dead_writers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)         # what the block wrote is on disk before the rename publishes it
        if path.exists():
            old = path.with_name(f"{TMP_PREFIX}{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as exc:
        if out_of_space(exc) and not isinstance(exc, LingraftError):
            raise no_space_error(path, exc) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_tmp(folder: str | Path) -> int:
    """Remove leftovers of interrupted atomic writes in `folder`; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed

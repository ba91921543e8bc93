"""Path confinement: names that come from configs or data never lead outside their folder.

The rule. A folder the user chose (an `out`, a pipeline's `work_dir`) is trusted as given. A
name that a config or a data file supplies *inside* such a folder (a pipeline stage's name, a
shard or part listed in a manifest or index) must be one plain path component, and a path
that must live under a base folder (a pipeline stage's output, which the pipeline may delete
and rewrite) must resolve under it, symlinks resolved too. Breaking either is a LingraftError that
names the offending value, raised before anything is read, written or deleted.
"""
from __future__ import annotations

import os
from pathlib import Path

from lingraft.errors import LingraftError


def safe_name(name: str, what: str) -> str:
    """`name` if it is a single plain component (not empty, `.`, `..`, and without separators)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "\0" in name
            or "/" in name or (os.sep != "/" and os.sep in name) or (os.altsep and os.altsep in name)):
        raise LingraftError(f"{what} {name!r}: must be a plain file name (no '/', '..' or empty)")
    return name


def is_inside(path: str | Path, base: str | Path) -> bool:
    """Whether `path` is `base` or under it, once both are made absolute and symlinks resolved."""
    resolved, root = Path(path).resolve(), Path(base).resolve()
    return resolved == root or root in resolved.parents


def require_inside(path: str | Path, base: str | Path, what: str) -> Path:
    """`path` unchanged if it lies inside `base`; a LingraftError naming `what` otherwise."""
    if not is_inside(path, base):
        raise LingraftError(f"{what} {str(path)!r} is outside {str(base)!r} (via '..', an absolute path or a symlink)")
    return Path(path)


def safe_join(base: str | Path, name: str, what: str = "file name") -> Path:
    """`base / name` for a data- or config-supplied `name`, which must be a plain component.

    Symlinks inside `base` are its owner's business and are followed (a Hugging Face cache
    snapshot is a folder of links into ../../blobs)."""
    return Path(base) / safe_name(name, what)

"""Content hashes for manifests and integrity checks."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 22


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_tree(path: str | Path, exclude: tuple[str, ...] = ("manifest.json",)) -> str:
    """One hash over every file of a folder (relative names and contents), in sorted order."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel in exclude or rel.split("/")[-1].startswith(".tmp-"):
            continue
        h.update(rel.encode())
        h.update(b"\0")
        h.update(sha256_file(file).encode())
    return h.hexdigest()

"""Content hashes for manifests and integrity checks.

Stages hash multi-GB inputs for provenance and verify recorded checksums on load, often of
the same files (propagation verifies A's shards, then describes A, B and I in its manifest),
and pipelines re-run stages over unchanged inputs. So the digest of a big file is remembered,
in this process and on disk, under its identity: device, inode, size, mtime and ctime. Any
write, truncation or replacement changes that identity (ctime cannot be set from userland),
so a remembered digest is reused exactly when `git status` would trust its index. What it
cannot see is media corruption below the filesystem; set LINGRAFT_HASH_CACHE=0 to re-read
everything. Files modified in the last few seconds are never remembered, because on coarse
timestamps a second write within the same tick could keep the identity (git's "racy" case).
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lingraft.cache import cache_root

_CHUNK = 1 << 22
CACHE_MIN_BYTES = 64 << 20     # smaller files hash in milliseconds: not worth a cache entry
_RACY_SECONDS = 3.0
_remembered: dict[str, str] = {}


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _cache_file(identity: str) -> Path | None:
    if os.environ.get("LINGRAFT_HASH_CACHE", "1") == "0":
        return None
    return cache_root() / "file_sha256" / hashlib.sha256(identity.encode()).hexdigest()[:32]


def _cacheable(st: os.stat_result) -> bool:
    return st.st_size >= CACHE_MIN_BYTES and time.time() - st.st_mtime > _RACY_SECONDS


def _recall(st: os.stat_result) -> str | None:
    identity = _identity(st)
    if identity in _remembered:
        return _remembered[identity]
    cache = _cache_file(identity)
    try:
        digest = cache.read_text().strip() if cache else ""
    except OSError:
        return None
    if len(digest) == 64:
        _remembered[identity] = digest
        return digest
    return None


def remember(path: str | Path, digest: str) -> None:
    """Record `digest` as the sha256 of `path` as it is now: a writer that hashed what it wrote
    and closed it (no racy window: nobody else writes our fresh output)."""
    st = os.stat(path)
    if st.st_size < CACHE_MIN_BYTES:
        return
    identity = _identity(st)
    _remembered[identity] = digest
    cache = _cache_file(identity)
    if cache is not None:
        from lingraft.atomic import write_bytes     # lazy: keeps this module dependency-free
        try:
            write_bytes(cache, digest.encode())
        except OSError:      # a read-only or full cache only costs a re-hash next time
            pass


def sha256_file(path: str | Path) -> str:
    st = os.stat(path)
    if _cacheable(st) and (known := _recall(st)):
        return known
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if _cacheable(st) and _identity(os.stat(path)) == _identity(st):   # unchanged while we read it
        remember(path, digest)
    return digest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file, several at a time (hashlib releases the GIL on big buffers)."""
    if len(paths) < 2:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 2, 8)) as pool:
        return list(pool.map(sha256_file, paths))


def sha256_tree(path: str | Path, exclude: tuple[str, ...] = ("manifest.json",)) -> str:
    """One hash over every file of a folder (relative names and contents), in sorted order."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    files = [p for p in files if (rel := p.relative_to(root).as_posix()) not in exclude
             and not rel.split("/")[-1].startswith(".tmp-")]
    h = hashlib.sha256()
    for file, digest in zip(files, sha256_files(files)):
        h.update(file.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(digest.encode())
    return h.hexdigest()

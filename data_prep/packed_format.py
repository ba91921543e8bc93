"""The on-disk format of packed token streams: one shard's files, its index and checksums.

A packed folder holds shards named ``shard_00000`` ... and one ``manifest.json``. A shard is

  ``<name>.tokens.bin``   the token stream, raw uint16 (vocab <= 65,536) or uint32, native byte
                          order (little-endian on every platform lingraft runs on);
                          documents follow each other, each wrapped in the optional BOS/EOS;
  ``<name>.docs.npy``     int64 offset of every document's first token (BOS included) in the stream;
  ``<name>.samples.npy``  int64 offset of every sample's first token; a sample is the
                          ``seq_len + 1`` tokens from there (inputs and shifted labels);
  ``<name>.mask.bin``     optional uint8 loss mask, one byte per token (1 = the token is a
                          training target); written only when some document supplied a mask;
  ``<name>.done.json``    written last: counts, the settings key and every file's sha256.

Everything is plain binary or ``.npy`` (read with ``allow_pickle=False``), so shards are
memory-mapped, never unpickled. Samples never cross shards. This module only knows the
format; tokenization, work split and resume live in `data_prep.pack`.
"""
from __future__ import annotations

import hashlib
import io
import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lingraft.data_prep.pack_config import SampleStart
from lingraft.atomic import atomic_open, write_json
from lingraft.errors import LingraftError
from lingraft.hashing import remember, sha256_file
from lingraft.paths import safe_join

FORMAT = "lingraft.packed/1"
FILE_SUFFIXES = {"tokens": ".tokens.bin", "docs": ".docs.npy", "samples": ".samples.npy", "mask": ".mask.bin"}
DONE_SUFFIX = ".done.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (ids 0..65,535, so a vocabulary of up to 65,536), else uint32."""
    if vocab_size <= 0:
        raise LingraftError(f"vocabulary size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def plan_samples(n_tokens: int, seq_len: int, boundaries: np.ndarray | None = None) -> np.ndarray:
    """Start offsets of the ``seq_len + 1``-token samples cut from a stream of `n_tokens`.

    Without `boundaries` the stream is cut at stride `seq_len`: consecutive samples share one
    token (the last label of one is the first input of the next), so every token after the
    first is a target exactly once. With sorted `boundaries` (document or paragraph starts,
    the first one 0), every sample starts at a boundary when it can: the next sample starts
    at the last boundary inside the current one, or continues at stride `seq_len` when no
    boundary falls inside (a paragraph longer than a sample). Tokens between that boundary
    and the sample's end appear in both samples, so none is lost. The tail shorter than a
    sample is left out; `unused_tail` reports it.
    """
    span = seq_len + 1
    if n_tokens < span:
        return np.zeros(0, dtype=np.int64)
    if boundaries is None:
        return np.arange(0, n_tokens - span + 1, seq_len, dtype=np.int64)
    starts: list[int] = []
    start = int(boundaries[0]) if len(boundaries) else 0
    while start + span <= n_tokens:
        starts.append(start)
        last = int(boundaries[np.searchsorted(boundaries, start + seq_len, side="right") - 1])
        start = last if last > start else start + seq_len
    return np.asarray(starts, dtype=np.int64)


def unused_tail(n_tokens: int, seq_len: int, sample_starts: np.ndarray) -> int:
    """Tokens after the end of the last sample (all of them when there is no sample)."""
    if len(sample_starts) == 0:
        return n_tokens
    return n_tokens - int(sample_starts[-1]) - seq_len - 1


class ShardBuilder:
    """Collects one shard's documents as token ids (with optional loss masks) and writes it.

    `add` takes ids a tokenizer produced, so a text packer and a later instruction-tuning
    packer share the format: plain text passes no mask (every token is a target), chat data
    passes a 0/1 mask per token. BOS (never a target) and EOS (a target: the model learns to
    stop) are added here, so masks always line up with the ids.
    """

    def __init__(self, dtype: np.dtype, bos_id: int | None = None, eos_id: int | None = None):
        self.dtype = np.dtype(dtype)
        self._typecode = "H" if self.dtype == np.uint16 else "I"
        if array(self._typecode).itemsize != self.dtype.itemsize:   # C int sizes are platform-defined
            raise LingraftError(f"array typecode {self._typecode!r} is not {self.dtype.itemsize} bytes here")
        self._bos = array(self._typecode, [] if bos_id is None else [bos_id])
        self._eos = array(self._typecode, [] if eos_id is None else [eos_id])
        self._chunks: list[array] = []
        self._masks: list[np.ndarray | tuple[int, int]] = []   # (value, n): n tokens all 0 or all 1
        self._has_mask = False
        self._doc_starts = array("q")
        self._boundaries = array("q")
        self.n_tokens = 0
        self.tokens_by_source: dict[str, int] = {}

    @property
    def n_docs(self) -> int:
        return len(self._doc_starts)

    def add(self, ids: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray | None = None,
            boundaries: Iterable[int] = (), source: str = "") -> None:
        """Append one document. `boundaries` are extra sample-start candidates (token offsets
        inside `ids`, e.g. paragraph starts); `source` feeds the per-source token counts."""
        body = self._as_ids(ids)
        if mask is not None:
            mask = np.ascontiguousarray(mask, dtype=np.uint8)
            if mask.shape != (len(body),):
                raise LingraftError(f"loss mask has {mask.size} entries for a document of {len(body)} tokens")
            if mask.size and mask.max() > 1:
                raise LingraftError("loss mask values must be 0 or 1")
            self._has_mask = True
        doc_start = self.n_tokens
        self._doc_starts.append(doc_start)
        inner = doc_start + len(self._bos)
        self._boundaries.extend(inner + int(b) for b in boundaries if 0 < int(b) < len(body))
        # BOS is context, never a target; EOS is a target (the model learns to stop).
        pieces = ((self._bos, (0, len(self._bos))), (body, (1, len(body)) if mask is None else mask),
                  (self._eos, (1, len(self._eos))))
        for chunk, chunk_mask in pieces:
            if len(chunk):
                self._chunks.append(chunk)
                self._masks.append(chunk_mask)
                self.n_tokens += len(chunk)
        added = self.n_tokens - doc_start
        self.tokens_by_source[source] = self.tokens_by_source.get(source, 0) + added

    def _as_ids(self, ids: Sequence[int] | np.ndarray) -> array:
        try:
            if isinstance(ids, np.ndarray):
                if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
                    raise OverflowError(f"id {int(ids.max())} out of range")
                return array(self._typecode, ids.astype(self.dtype, copy=False).tobytes())
            if isinstance(ids, array) and ids.typecode == self._typecode:
                return ids
            return array(self._typecode, ids)   # C loop; raises OverflowError on an out-of-range id
        except OverflowError as exc:
            raise LingraftError(f"token id does not fit {self.dtype.name} ({exc}); wrong vocabulary size?") from None

    def write(self, folder: Path, name: str, seq_len: int, sample_start: SampleStart) -> dict[str, Any]:
        """Write the shard's data files atomically; return its record (counts and file hashes)."""
        doc_starts = np.frombuffer(self._doc_starts, dtype=np.int64) if self.n_docs else np.zeros(0, np.int64)
        if sample_start == "stream":
            boundaries = None
        elif sample_start == "document":
            boundaries = doc_starts
        else:
            extra = np.frombuffer(self._boundaries, dtype=np.int64) if len(self._boundaries) else np.zeros(0, np.int64)
            boundaries = np.union1d(doc_starts, extra)
        samples = plan_samples(self.n_tokens, seq_len, boundaries)
        files = {
            "tokens": _write_chunks(folder / f"{name}{FILE_SUFFIXES['tokens']}", self._chunks),
            "docs": _write_npy(folder / f"{name}{FILE_SUFFIXES['docs']}", doc_starts),
            "samples": _write_npy(folder / f"{name}{FILE_SUFFIXES['samples']}", samples),
        }
        if self._has_mask:
            masks = [np.full(m[1], m[0], np.uint8) if isinstance(m, tuple) else m for m in self._masks]
            files["mask"] = _write_chunks(folder / f"{name}{FILE_SUFFIXES['mask']}", masks)
        return {"shard": name, "docs": self.n_docs, "tokens": self.n_tokens, "samples": int(len(samples)),
                "unused_tail_tokens": unused_tail(self.n_tokens, seq_len, samples),
                "tokens_by_source": dict(sorted(self.tokens_by_source.items())), "files": files}


def _write_chunks(path: Path, chunks: Iterable[Any]) -> dict[str, Any]:
    """Write buffers back to back, hashing on the way (no second read, no concatenation)."""
    digest, size = hashlib.sha256(), 0
    with atomic_open(path, "wb") as fh:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            digest.update(view)
            fh.write(view)
            size += len(view)
    remember(path, digest.hexdigest())      # verifying the shard later need not read it again
    return {"file": path.name, "bytes": size, "sha256": digest.hexdigest()}


def _write_npy(path: Path, values: np.ndarray) -> dict[str, Any]:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(values, dtype=np.int64), allow_pickle=False)
    return _write_chunks(path, [buf.getbuffer()])


def done_path(folder: Path, name: str) -> Path:
    return folder / f"{name}{DONE_SUFFIX}"


def write_done(folder: Path, record: dict[str, Any]) -> None:
    """The shard's completion record; written after its data files, so it vouches for them."""
    write_json(done_path(folder, record["shard"]), record)


def read_valid_done(folder: Path, name: str, key: str) -> dict[str, Any] | None:
    """The shard's done record if it matches `key` and every file still has its recorded hash."""
    path = done_path(folder, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("key") != key:
        return None
    for entry in record.get("files", {}).values():
        file = safe_join(folder, entry["file"], f"{path}: file")
        if not file.is_file() or file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
            return None
    return record


def packed_outputs(shards: list[dict[str, Any]], *, tokenizer: dict[str, Any], dtype: str, seq_len: int,
                   sample_start: SampleStart, bos_id: int | None, eos_id: int | None,
                   source_mix: Any = None) -> dict[str, Any]:
    """The manifest's `outputs` for a packed folder: what `data_prep.dataset` reads and checks.
    `shards` are the records `ShardBuilder.write` returned, in shard order; `tokenizer` holds
    spec, fingerprint and vocab_size."""
    by_source: dict[str, int] = {}
    for shard in shards:
        for source, n in shard["tokens_by_source"].items():
            by_source[source] = by_source.get(source, 0) + n
    return {
        "format": FORMAT,
        "tokenizer": tokenizer,
        "dtype": dtype,
        "seq_len": seq_len,
        "sample_start": sample_start,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "loss_mask": any("mask" in s["files"] for s in shards),
        "counts": {key: sum(s[key] for s in shards) for key in ("docs", "tokens", "samples", "unused_tail_tokens")},
        "tokens_by_source": dict(sorted(by_source.items())),
        "source_mix": source_mix,
        "shards": shards,
    }


@dataclass
class ShardArrays:
    """One shard opened for reading: the token stream and mask memory-mapped, the index loaded."""
    tokens: np.ndarray
    doc_starts: np.ndarray
    sample_starts: np.ndarray
    mask: np.ndarray | None


def check_file(folder: Path, entry: dict[str, Any], verify_checksum: bool = False) -> Path:
    """`folder/entry['file']` after checking its size (cheap) and optionally its sha256."""
    path = safe_join(folder, entry["file"], f"{folder}: shard file")
    if not path.is_file():
        raise LingraftError(f"{path}: shard file missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise LingraftError(f"{path}: truncated or altered shard file ({size} bytes, manifest says {entry['bytes']})")
    if verify_checksum and sha256_file(path) != entry["sha256"]:
        raise LingraftError(f"{path}: sha256 does not match the manifest (corrupt shard file)")
    return path


def open_shard(folder: Path, record: dict[str, Any], dtype: np.dtype, verify_checksum: bool = False) -> ShardArrays:
    files = {role: check_file(folder, entry, verify_checksum) for role, entry in record["files"].items()}
    tokens = np.memmap(files["tokens"], dtype=dtype, mode="r") if record["tokens"] else np.zeros(0, dtype)
    if len(tokens) != record["tokens"]:
        raise LingraftError(f"{files['tokens']}: holds {len(tokens)} tokens, manifest says {record['tokens']}")
    mask = np.memmap(files["mask"], dtype=np.uint8, mode="r") if "mask" in files and record["tokens"] else None
    try:
        doc_starts = np.load(files["docs"], mmap_mode="r", allow_pickle=False)
        sample_starts = np.load(files["samples"], allow_pickle=False)
    except ValueError as exc:
        raise LingraftError(f"{folder / record['shard']}: unreadable shard index ({exc})") from None
    if len(sample_starts) != record["samples"] or len(doc_starts) != record["docs"]:
        raise LingraftError(f"{files['samples']}: index does not match the manifest's counts")
    return ShardArrays(tokens=tokens, doc_starts=doc_starts, sample_starts=sample_starts, mask=mask)

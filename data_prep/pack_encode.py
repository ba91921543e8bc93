"""Tokenizing batches of text pieces for `prep pack`: in worker processes, or in a thread here.

A batch is a list of texts (whole documents, or pieces of long ones, see `pack_seams`); its
result holds every piece's ids back to back in one buffer of the shard's token type, their
lengths and, for `sample_start: paragraph`, the paragraph starts inside each piece. Only text
goes to a worker and only that compact result comes back. Workers are started once per run
and keep their tokenizer; each gets cores // workers tokenizer threads. Worker processes
preload a faster malloc when one is installed (`lingraft.preload`); that is why, by
default, tokenizing runs in one process per core rather than in threads of this one.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from array import array
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from lingraft.atomic import TMP_PREFIX
from lingraft.errors import LingraftError
from lingraft.parent_watch import exit_with_parent
from lingraft.preload import preloaded, settle_preload

# Worker processes by default. A guess, not a measurement (only 2 cores were measured): this
# process reads, joins, writes and hashes for all of them, about 3 CPU-s per 12.6 M tokens
# against 15 CPU-s of tokenizing, so somewhere past 5-8 workers it would become the bottleneck.
MAX_AUTO_WORKERS = 8

# The first non-blank character after a line break starts a paragraph: this covers both
# blank-line-separated paragraphs and one-paragraph-per-line text.
_PARAGRAPH_START = re.compile(r"\n\s*(?=\S)")


@dataclass(frozen=True)
class EncodedBatch:
    ids: array                          # every piece's ids back to back
    lengths: list[int]                  # tokens per piece
    paragraphs: list[list[int]] | None  # paragraph starts per piece (token offsets), when asked for


def paragraph_token_starts(text: str, encoding: Any) -> list[int]:
    """Token offsets of the paragraphs of `text` (its first paragraph excluded), from the
    encoding's character offsets: the document is tokenized whole, so the token stream is the
    same in every `sample_start` mode. A paragraph starts at the token holding its first
    character; a character no token covers (dropped by normalisation) yields no boundary,
    which only removes one candidate sample start."""
    starts = []
    for match in _PARAGRAPH_START.finditer(text):
        token = encoding.char_to_token(match.end())
        if token:  # None: not covered; 0: the document start, a boundary anyway
            starts.append(token)
    return starts


def encode_texts(texts: list[str], typecode: str, paragraphs: bool, tokenizer: Any) -> EncodedBatch:
    """Tokenize `texts` in one call (spread over the tokenizer's threads)."""
    ids = array(typecode)
    if paragraphs:  # offsets are needed to place paragraph starts
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        starts = [paragraph_token_starts(text, enc) for text, enc in zip(texts, encodings)]
    else:           # ids only: skips building offsets and string tokens
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        starts = None
    lengths = []
    try:
        for enc in encodings:
            piece = enc.ids
            ids.extend(piece)     # C loop; raises OverflowError on an out-of-range id
            lengths.append(len(piece))
    except OverflowError as exc:
        dtype = np.dtype(np.uint16 if typecode == "H" else np.uint32)
        raise LingraftError(f"token id does not fit {dtype.name} ({exc}); wrong vocabulary size?") from None
    return EncodedBatch(ids, lengths, starts)


def plan_workers(requested: int | None, allocator: str | None, cores: int) -> int:
    """Tokenizer processes for a rank with `cores` cores: `requested`, or by default one per
    core (up to `MAX_AUTO_WORKERS`) when they get a faster allocator, else 1 (threads of this
    process, which cannot change its own allocator)."""
    if requested is not None:
        return requested
    return max(1, min(cores, MAX_AUTO_WORKERS)) if allocator else 1


_WORKER_TOKENIZERS: dict[str, Any] = {}


def _init_worker(threads: int, allocator: str | None) -> None:
    """Process-pool initializer: size the Rust thread pool before first use."""
    exit_with_parent()   # a killed `prep pack` must not leave workers packing and holding memory
    settle_preload(allocator, "pack worker")
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")
    import tokenizers  # noqa: F401  (imported while the parent still loads its own tokenizer)


def _encode_in_worker(tokenizer_file: str, texts: list[str], typecode: str, paragraphs: bool) -> EncodedBatch:
    tokenizer = _WORKER_TOKENIZERS.get(tokenizer_file)
    if tokenizer is None:       # the first batch: the parent wrote the file after the pool started
        from tokenizers import Tokenizer
        tokenizer = _WORKER_TOKENIZERS[tokenizer_file] = Tokenizer.from_file(tokenizer_file)
    return encode_texts(texts, typecode, paragraphs, tokenizer)


def _fingerprint_of_json(tokenizer_json: str) -> str:
    from lingraft.vocabulary.loading import tokenizer_fingerprint
    return tokenizer_fingerprint(json.loads(tokenizer_json))


def _fingerprint_of_file(tokenizer_file: str) -> str:
    return _fingerprint_of_json(Path(tokenizer_file).read_text(encoding="utf-8"))


class WorkerPool:
    """Tokenizer processes for one rank (or, with one worker, threads of this process: a
    tokenizer call spreads its batch over all cores and releases the GIL, so reading and
    writing go on beside it). Worker processes start with the pool, before the parent has
    loaded its tokenizer; `load` hands them the tokenizer (through a file: a large spawn or
    task payload would block this process), and they read it on their first batch."""

    def __init__(self, workers: int, threads: int, scratch: Path, allocator: str | None = None):
        self.workers = workers
        self.allocator = allocator if workers > 1 else None
        # Unique per pool: ranks on several nodes may share `scratch` (and a pid).
        self._file = scratch / f"{TMP_PREFIX}tokenizer.{os.getpid()}.{uuid.uuid4().hex}.json"
        self._backend: Any = None
        self._json = ""
        self.executor: Executor
        if workers > 1:
            # spawn, not fork: a forked child of a process that already used the Rust thread pool can hang.
            self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads, allocator))
            with preloaded(allocator):   # the pool spawns on submit: start every worker now
                for _ in range(workers):
                    self.executor.submit(int)
        else:
            # Two calls at a time: while one waits on its last piece, the other keeps the threads busy.
            self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pack-encode")

    def load(self, backend: Any, tokenizer_json: str) -> None:
        """The tokenizer to use: `backend` here, its JSON (`backend.to_str()`) in worker processes."""
        self._backend = backend
        self._json = tokenizer_json
        if isinstance(self.executor, ProcessPoolExecutor):
            # Written whole before any batch names it; a scratch file (TMP_PREFIX), so no rename is needed.
            self._file.write_text(tokenizer_json, encoding="utf-8")

    def fingerprint(self) -> Future:
        """The loaded tokenizer's `tokenizer_fingerprint`, computed beside tokenizing. In a worker
        process when there are some: the canonical JSON dump holds the GIL for most of a second
        for a large vocabulary, which here would hold up the reading that feeds the workers."""
        if isinstance(self.executor, ProcessPoolExecutor):
            return self.executor.submit(_fingerprint_of_file, str(self._file))
        return self.executor.submit(_fingerprint_of_json, self._json)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)
        self._file.unlink(missing_ok=True)

    def submit(self, texts: list[str], typecode: str, paragraphs: bool) -> Future:
        if self._backend is None:
            raise RuntimeError("WorkerPool.load must come before submit")
        if isinstance(self.executor, ThreadPoolExecutor):
            return self.executor.submit(encode_texts, texts, typecode, paragraphs, self._backend)
        return self.executor.submit(_encode_in_worker, str(self._file), texts, typecode, paragraphs)

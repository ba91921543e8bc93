"""Tokenizing batches of text pieces for `prep pack`: in worker processes, or in a thread here.

A batch is a list of texts (whole documents, or pieces of long ones, see `pack_seams`); its
result holds every piece's ids back to back in one buffer of the shard's token type, their
lengths and, for `sample_start: paragraph`, the paragraph starts inside each piece. Only text
goes to a worker and only that compact result comes back. Workers are started once per run
and keep their tokenizer; each gets cores // workers tokenizer threads.
"""
from __future__ import annotations

import os
import re
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


def encode_texts(texts: list[str], typecode: str, paragraphs: bool, tokenizer: Any = None) -> EncodedBatch:
    """Tokenize `texts` in one call (spread over the tokenizer's threads)."""
    tokenizer = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
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


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_file: str, threads: int) -> None:
    """Process-pool initializer: size the Rust thread pool before first use, then load the tokenizer."""
    exit_with_parent()   # a killed `prep pack` must not leave workers packing and holding memory
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")
    from tokenizers import Tokenizer
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_file(tokenizer_file)


class WorkerPool:
    """Tokenizer processes for one node (or, with one worker, threads of this process: a
    tokenizer call spreads its batch over all cores and releases the GIL, so reading and
    writing go on beside it). Start it early: workers load their tokenizer while the parent
    finishes its set-up."""

    def __init__(self, backend: Any, tokenizer_json: str, workers: int, scratch: Path):
        self.backend = backend
        self.workers = workers
        self._file = scratch / f"{TMP_PREFIX}tokenizer.{os.getpid()}.json"
        self.executor: Executor
        if workers > 1:
            threads = max(1, len(os.sched_getaffinity(0)) // workers)
            # The tokenizer goes through a file: a large spawn payload would block this process
            # until each child had started and read it, one child after another.
            self._file.write_text(tokenizer_json, encoding="utf-8")
            # spawn, not fork: a forked child of a process that already used the Rust thread pool can hang.
            self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                                initializer=_init_worker, initargs=(str(self._file), threads))
            for _ in range(workers):   # the pool spawns on submit: start every worker now
                self.executor.submit(int)
        else:
            # Two calls at a time: while one waits on its last piece, the other keeps the threads busy.
            self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pack-encode")

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)
        self._file.unlink(missing_ok=True)

    def submit(self, texts: list[str], typecode: str, paragraphs: bool) -> Future:
        if isinstance(self.executor, ThreadPoolExecutor):
            return self.executor.submit(encode_texts, texts, typecode, paragraphs, self.backend)
        return self.executor.submit(encode_texts, texts, typecode, paragraphs)

"""`lingraft prep pack`: tokenize cleaned parts into packed, indexed token shards.

Work split: input part k becomes shard k. On one node a process pool tokenizes several
parts at once (each worker reads its part file itself and writes its shard itself, so
neither text nor token lists cross a pipe, only a small summary). Across nodes, when
launched under `mpirun`, rank r packs the shards with k % world == r; rank 0 writes the
manifest once every rank has finished.

Resume: every shard's files are written atomically and its done record (with the files'
sha256 and a key of every setting that shapes its bytes) last. A restarted run skips the
shards whose done record still validates, so the result is byte-identical to an
uninterrupted run. The shard format itself is `data_prep.packed_format`.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.packed_format import (FORMAT, ShardBuilder, packed_outputs, read_valid_done, shard_name,
                                     token_dtype, write_done)
from lingraft.atomic import TMP_PREFIX, clean_stale_tmp
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_text
from lingraft.log import get_logger, progress
from lingraft.manifest import ManifestError, new_manifest, read_manifest
from lingraft.parent_watch import exit_with_parent

log = get_logger(__name__)

# The first non-blank character after a line break starts a paragraph: this covers both
# blank-line-separated paragraphs and one-paragraph-per-line text.
_PARAGRAPH_START = re.compile(r"\n\s*(?=\S)")


@dataclass(frozen=True)
class EncodeSettings:
    """Everything that shapes a shard's bytes (besides its input part and the tokenizer)."""
    seq_len: int
    sample_start: str
    bos_id: int | None
    eos_id: int | None
    dtype: str
    batch_chars: int


@dataclass(frozen=True)
class ShardTask:
    index: int
    part: Path
    out_dir: Path
    key: str          # hash of input part, tokenizer and settings; a done record must carry the same


# ---------------------------------------------------------------- tokenizing one part

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


def _pack_in_worker(task: ShardTask, settings: EncodeSettings) -> dict[str, Any]:
    return pack_shard(task, settings, _WORKER_TOKENIZER)


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


def _read_part(part: Path) -> Any:
    """(text, source) of every line of a clean part file."""
    with open(part, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
                text, source = record["text"], record.get("source", "")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise LingraftError(f"{part}:{lineno}: not a clean-part record ({type(exc).__name__}: {exc})") \
                    from None
            if not isinstance(text, str):
                raise LingraftError(f"{part}:{lineno}: 'text' is not a string")
            yield text, source


def pack_shard(task: ShardTask, settings: EncodeSettings, tokenizer: Any) -> dict[str, Any]:
    """Tokenize one part into one shard (data files, then the done record); return the record."""
    started = time.perf_counter()
    builder = ShardBuilder(np.dtype(settings.dtype), bos_id=settings.bos_id, eos_id=settings.eos_id)
    paragraphs = settings.sample_start == "paragraph"
    texts: list[str] = []
    sources: list[str] = []
    chars = 0

    def flush() -> None:
        if paragraphs:  # offsets are needed to place paragraph starts
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            for text, enc, source in zip(texts, encodings, sources):
                builder.add(enc.ids, boundaries=paragraph_token_starts(text, enc), source=source)
        else:           # ids only: skips building offsets and string tokens
            for enc, source in zip(tokenizer.encode_batch_fast(texts, add_special_tokens=False), sources):
                builder.add(enc.ids, source=source)
        texts.clear()
        sources.clear()

    for text, source in _read_part(task.part):
        texts.append(text)
        sources.append(source)
        chars += len(text)
        if chars >= settings.batch_chars:
            flush()
            chars = 0
    if texts:
        flush()
    record = builder.write(task.out_dir, shard_name(task.index), settings.seq_len, settings.sample_start)
    record.update(part=task.part.name, key=task.key)
    write_done(task.out_dir, record)
    record["seconds"] = time.perf_counter() - started
    return record


# ---------------------------------------------------------------- distribution

@dataclass
class World:
    """This process's place among MPI ranks (size 1 without mpirun)."""
    rank: int = 0
    size: int = 1
    comm: Any = None

    @classmethod
    def detect(cls) -> "World":
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)
        if size <= 1:
            return cls()
        from mpi4py import MPI  # imported only under mpirun: initialising MPI elsewhere is slow or fails
        comm = MPI.COMM_WORLD
        return cls(rank=comm.Get_rank(), size=comm.Get_size(), comm=comm)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value on every rank (a list of one without MPI)."""
        return self.comm.allgather(value) if self.comm is not None else [value]

    def run_all(self, step: Any, *args: Any) -> Any:
        """`step(*args)` on this rank; if it fails on any rank, raise on every rank, so that no
        rank waits forever in a collective for one that is gone. Without MPI, errors pass as is."""
        if self.comm is None:
            return step(*args)
        try:
            result, error = step(*args), None
        except Exception as exc:
            result, error = None, f"rank {self.rank}: {exc}"
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise LingraftError("; ".join(errors))
        return result


def _special_id(tok: Any, wanted: bool, override: str | None, attr: str) -> int | None:
    if not wanted:
        return None
    token = override or getattr(tok, f"{attr}_token", None)
    if token is None:
        raise LingraftError(f"the tokenizer names no {attr.upper()} token; set {attr}_token "
                            f"(or {attr}: false)")
    token_id = tok.backend_tokenizer.token_to_id(token)
    if token_id is None:
        raise LingraftError(f"{attr}_token {token!r} is not in the tokenizer's vocabulary")
    return token_id


def _shard_key(settings: EncodeSettings, tokenizer_sha256: str, part_sha256: str) -> str:
    fields = {"format": FORMAT, "part": part_sha256, "tokenizer": tokenizer_sha256, **settings.__dict__}
    fields.pop("batch_chars")  # batching changes speed, never bytes
    return sha256_text(json.dumps(fields, sort_keys=True))


class WorkerPool:
    """Tokenizer processes for one node, one shard per task; each gets cores // workers Rust
    threads. Tasks are submitted before the parent's remaining set-up (the manifest's
    fingerprint), so that overlaps the tokenizing. With one worker, shards are packed in this
    process and each batch is spread over all cores by the tokenizer's own thread pool."""

    def __init__(self, backend: Any, tokenizer_json: str, workers: int, scratch: Path):
        self.backend = backend
        self.executor: ProcessPoolExecutor | None = None
        self._file = scratch / f"{TMP_PREFIX}tokenizer.{os.getpid()}.json"
        if workers > 1:
            threads = max(1, len(os.sched_getaffinity(0)) // workers)
            # The tokenizer goes through a file: a large spawn payload would block this process
            # until each child had started and read it, one child after another.
            self._file.write_text(tokenizer_json, encoding="utf-8")
            # spawn, not fork: a forked child of a process that already used the Rust thread pool can hang.
            self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                                initializer=_init_worker, initargs=(str(self._file), threads))
        self._tasks: list[ShardTask] = []
        self._futures: list[Any] = []
        self._settings: EncodeSettings | None = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)
        self._file.unlink(missing_ok=True)

    def submit(self, tasks: list[ShardTask], settings: EncodeSettings) -> None:
        """Queue `tasks`, largest part first so the pool does not wait on one straggler at the end;
        worker processes start on them at once."""
        self._tasks = sorted(tasks, key=lambda t: -t.part.stat().st_size)
        self._settings = settings
        if self.executor is not None:
            self._futures = [self.executor.submit(_pack_in_worker, task, settings) for task in self._tasks]

    def results(self) -> list[dict[str, Any]]:
        """The done records of the submitted tasks (packing them here when there is no pool)."""
        records = []
        with progress(total=len(self._tasks), desc="pack", unit="shard") as bar:
            if self.executor is None:
                for task in self._tasks:
                    records.append(pack_shard(task, self._settings, self.backend))
                    bar.update()
            else:
                for future in as_completed(self._futures):
                    records.append(future.result())
                    bar.update()
        return records


# ---------------------------------------------------------------- the stage

STAGE = "prep.pack"


def _clean_first(cfg: PackConfig) -> None:
    """Run `prep clean` on cfg.sources into <out>/clean, unless a finished clean output with
    the same inputs and parameters is already there."""
    from lingraft.data_prep.clean_config import CleanStageConfig
    from lingraft.data_prep.clean_stage import STAGE as CLEAN_STAGE
    from lingraft.data_prep.clean_stage import run_clean
    clean_cfg = CleanStageConfig(sources=cfg.sources, out=str(Path(cfg.out) / "clean"), clean=cfg.clean, mix=cfg.mix)
    expected = new_manifest(CLEAN_STAGE, clean_cfg, inputs={s.name: s.path for s in cfg.sources}).fingerprint
    try:
        if read_manifest(clean_cfg.out).get("fingerprint") == expected:
            log.info("%s: clean output already complete, reusing it", clean_cfg.out)
            return
    except ManifestError:
        pass
    run_clean(clean_cfg)


def _prepare(cfg: PackConfig, world: World) -> None:
    """Rank 0 only, before anyone writes: the output folder, its stale temp files, the clean stage."""
    if world.rank == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(cfg.out)
        if cfg.sources:
            _clean_first(cfg)


@dataclass
class RankResult:
    records: list[dict[str, Any]]      # done records of this rank's shards ("seconds" on fresh ones)
    settings: EncodeSettings
    fingerprint: str
    vocab_size: int


def _pack_rank(cfg: PackConfig, world: World, input_dir: Path) -> RankResult:
    """Pack this rank's shards (k % world.size == rank), skipping those already done."""
    from lingraft.data_prep.clean_stage import read_clean_parts  # validates the parts' checksums
    from lingraft.vocabulary.loading import load_tokenizer, tokenizer_fingerprint

    out = Path(cfg.out)
    parts = read_clean_parts(input_dir)
    part_sha = {p["file"]: p["sha256"] for p in read_manifest(input_dir)["outputs"]["parts"]}
    tok = load_tokenizer(cfg.tokenizer)
    backend = tok.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    settings = EncodeSettings(seq_len=cfg.seq_len, sample_start=cfg.sample_start,
                              bos_id=_special_id(tok, cfg.bos, cfg.bos_token, "bos"),
                              eos_id=_special_id(tok, cfg.eos, cfg.eos_token, "eos"),
                              dtype=token_dtype(len(tok)).name, batch_chars=cfg.batch_chars)
    tokenizer_json = backend.to_str()
    tokenizer_sha = sha256_text(tokenizer_json)
    tasks = [ShardTask(k, part, out, _shard_key(settings, tokenizer_sha, part_sha[part.name]))
             for k, part in enumerate(parts) if k % world.size == world.rank]
    records = [rec for t in tasks if (rec := read_valid_done(out, shard_name(t.index), t.key))]
    if records:
        log.info("resuming: %d of %d shards already done", len(records), len(tasks))
    done = {r["shard"] for r in records}
    todo = [t for t in tasks if shard_name(t.index) not in done]
    with WorkerPool(backend, tokenizer_json, min(cfg.workers, max(1, len(todo))), out) as pool:
        pool.submit(todo, settings)
        fingerprint = tokenizer_fingerprint(tok)   # the manifest's; computed while the workers tokenize
        records += pool.results()
    return RankResult(records, settings, fingerprint, len(tok))


def run_pack(cfg: PackConfig) -> Path:
    world = World.detect()
    started = time.perf_counter()
    out = Path(cfg.out)
    world.run_all(_prepare, cfg, world)
    input_dir = Path(cfg.input) if cfg.input is not None else out / "clean"
    mine: RankResult = world.run_all(_pack_rank, cfg, world, input_dir)

    records = sorted((r for recs in world.gather(mine.records) for r in recs), key=lambda r: r["shard"])
    fresh = [r for r in records if "seconds" in r]
    packed_tokens = sum(r["tokens"] for r in fresh)
    seconds = time.perf_counter() - started
    log.info("packed %d shards (%d reused): %s tokens in %.1fs, %.2f M tokens/s", len(fresh),
             len(records) - len(fresh), f"{packed_tokens:,}", seconds, packed_tokens / max(seconds, 1e-9) / 1e6)
    if world.rank == 0:
        settings = mine.settings
        manifest = new_manifest(STAGE, cfg, inputs={"input": input_dir, "tokenizer": cfg.tokenizer})
        manifest.outputs = packed_outputs(
            [{k: v for k, v in r.items() if k not in ("key", "seconds")} for r in records],
            tokenizer={"spec": cfg.tokenizer, "fingerprint": mine.fingerprint, "vocab_size": mine.vocab_size},
            dtype=settings.dtype, seq_len=settings.seq_len, sample_start=settings.sample_start,
            bos_id=settings.bos_id, eos_id=settings.eos_id,
            source_mix=read_manifest(input_dir)["outputs"].get("source_mix"))
        manifest.metrics = {"seconds": round(seconds, 3), "shards_packed": len(fresh),
                            "shards_reused": len(records) - len(fresh), "ranks": world.size,
                            "workers": cfg.workers, "tokens_per_s": round(packed_tokens / max(seconds, 1e-9))}
        manifest.write(out)
    world.barrier()
    return out

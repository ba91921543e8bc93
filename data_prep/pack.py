"""`lingraft prep pack`: tokenize cleaned parts into packed, indexed token shards.

Work split: input part k becomes shard k. This process reads the parts in order, cuts long
documents into pieces at paragraph starts where that cannot change a token (`pack_seams`),
and hands batches of about `batch_chars` characters to the tokenizer workers
(`pack_encode`), a bounded number at a time, so that reading, tokenizing and writing
overlap and no worker waits on one long document or one large part. Results come back in
input order and are joined into documents; each finished shard is written and hashed by a
writer thread while the next is tokenized. The bytes are those of tokenizing every
document whole, one after another (tests/integration/test_pack_identity.py). Across nodes, under
`mpirun`, rank r packs the shards with k % world == r, each rank with its own workers; a
shard's bytes depend only on its part, the tokenizer and the settings, never on the rank
count, so any number of ranks gives the output of one process. Rank 0 writes the manifest
once every rank has finished.

Resume: every shard's files are written atomically and its done record (with the files'
sha256 and a key of every setting that shapes its bytes) last. A restarted run skips the
shards whose done record still validates, so the result is byte-identical to an
uninterrupted run. The shard format itself is `data_prep.packed_format`.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.pack_encode import EncodedBatch, WorkerPool, plan_workers
from lingraft.data_prep.pack_seams import cut_points, cuts_at_paragraphs, pieces, seam_facts
from lingraft.data_prep.packed_format import (FORMAT, ShardBuilder, packed_outputs, read_valid_done, shard_name,
                                     token_dtype, write_done)
from lingraft.atomic import clean_stale_tmp
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_text
from lingraft.log import get_logger, progress
from lingraft.manifest import ManifestError, new_manifest, read_manifest
from lingraft.preload import cores_per_local_rank, find_allocator

log = get_logger(__name__)


@dataclass(frozen=True)
class EncodeSettings:
    """Everything that shapes a shard's bytes (besides its input part and the tokenizer)."""
    seq_len: int
    sample_start: str
    bos_id: int | None
    eos_id: int | None
    dtype: str


@dataclass(frozen=True)
class ShardTask:
    index: int
    part: Path
    out_dir: Path
    key: str          # hash of input part, tokenizer and settings; a done record must carry the same


# ---------------------------------------------------------------- reading and assembling

def _read_part(part: Path) -> Iterator[tuple[str, str]]:
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


@dataclass(frozen=True)
class _Piece:
    source: str
    last: bool        # the document's last piece


@dataclass(frozen=True)
class _ShardEnd:
    task: ShardTask


@dataclass
class _Batch:
    texts: list[str] = field(default_factory=list)
    items: list[_Piece | _ShardEnd] = field(default_factory=list)   # in input order
    chars: int = 0


class _Assembler:
    """Joins tokenized pieces (in input order) into documents and documents into shards; hands
    each finished shard to the writer thread."""

    def __init__(self, settings: EncodeSettings, writer: ThreadPoolExecutor):
        self.settings = settings
        self.writer = writer
        self.writes: list[Future] = []
        self._builder = self._new_builder()
        self._started = time.perf_counter()
        self._ids: list[Any] = []
        self._boundaries: list[int] = []
        self._length = 0

    def _new_builder(self) -> ShardBuilder:
        s = self.settings
        return ShardBuilder(np.dtype(s.dtype), bos_id=s.bos_id, eos_id=s.eos_id)

    def take(self, batch: _Batch, result: EncodedBatch | None) -> None:
        offset, k = 0, 0
        for item in batch.items:
            if isinstance(item, _ShardEnd):
                self.writes.append(self.writer.submit(_write_shard, self._builder, item.task, self.settings,
                                                      self._started))
                self._builder, self._started = self._new_builder(), time.perf_counter()
                continue
            n = result.lengths[k]
            if self._length:      # a cut: the piece starts a paragraph of the document
                self._boundaries.append(self._length)
            if result.paragraphs is not None:
                self._boundaries.extend(self._length + b for b in result.paragraphs[k])
            self._ids.append(result.ids[offset:offset + n])
            self._length += n
            offset, k = offset + n, k + 1
            if item.last:
                ids = self._ids[0]
                for more in self._ids[1:]:
                    ids.extend(more)      # same typecode: a memory copy
                self._builder.add(ids, boundaries=self._boundaries, source=item.source)
                self._ids, self._boundaries, self._length = [], [], 0


def _write_shard(builder: ShardBuilder, task: ShardTask, settings: EncodeSettings, started: float) -> dict[str, Any]:
    record = builder.write(task.out_dir, shard_name(task.index), settings.seq_len, settings.sample_start)
    record.update(part=task.part.name, key=task.key)
    write_done(task.out_dir, record)
    record["seconds"] = time.perf_counter() - started
    return record


def pack_shards(tasks: list[ShardTask], settings: EncodeSettings, pool: WorkerPool, *, batch_chars: int,
                cut_chars: int | None) -> list[dict[str, Any]]:
    """Tokenize `tasks` (in order) through `pool` and write their shards; return the done records.
    `cut_chars`: cut documents into pieces of about that many characters (None: never cut)."""
    typecode = "H" if np.dtype(settings.dtype) == np.uint16 else "I"
    paragraphs = settings.sample_start == "paragraph"
    # Enough batches in flight that no worker waits for the next one, few enough to bound memory.
    in_flight: deque[tuple[_Batch, Future | None]] = deque()
    limit = 2 * pool.workers + 2
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-write") as writer, \
            progress(total=len(tasks), desc="pack", unit="shard") as bar:
        assembler = _Assembler(settings, writer)

        def finish_oldest() -> None:
            batch, future = in_flight.popleft()
            assembler.take(batch, future.result() if future is not None else None)
            bar.update(sum(isinstance(item, _ShardEnd) for item in batch.items))

        def send(batch: _Batch) -> _Batch:
            future = pool.submit(batch.texts, typecode, paragraphs) if batch.texts else None
            in_flight.append((batch, future))
            while len(in_flight) > limit:
                finish_oldest()
            return _Batch()

        batch = _Batch()
        for task in tasks:
            for text, source in _read_part(task.part):
                chunks = pieces(text, cut_points(text, cut_chars)) if cut_chars and len(text) > cut_chars else [text]
                for j, chunk in enumerate(chunks):
                    batch.texts.append(chunk)
                    batch.items.append(_Piece(source, last=j == len(chunks) - 1))
                    batch.chars += len(chunk)
                    if batch.chars >= batch_chars:
                        batch = send(batch)
            batch.items.append(_ShardEnd(task))
        send(batch)
        while in_flight:
            finish_oldest()
        return [write.result() for write in assembler.writes]


# ---------------------------------------------------------------- distribution

@dataclass
class World:
    """This process's place among MPI ranks (size 1 without mpirun)."""
    rank: int = 0
    size: int = 1
    comm: Any = None
    local_size: int | None = None    # ranks of this job on this node, from MPI (None: not under MPI)

    @classmethod
    def detect(cls) -> "World":
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)
        if size <= 1:
            return cls()
        from mpi4py import MPI  # imported only under mpirun: initialising MPI elsewhere is slow or fails
        comm = MPI.COMM_WORLD
        # from MPI itself (the ranks that share memory with this one), whatever the launcher
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_size = node.Get_size()
        node.Free()
        return cls(rank=comm.Get_rank(), size=comm.Get_size(), comm=comm, local_size=local_size)

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
    # Batching and cutting documents change speed, never bytes, so they are not settings.
    fields = {"format": FORMAT, "part": part_sha256, "tokenizer": tokenizer_sha256, **settings.__dict__}
    return sha256_text(json.dumps(fields, sort_keys=True))


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
    workers: int
    allocator: str | None


def _encode_settings(cfg: PackConfig, tok: Any) -> EncodeSettings:
    return EncodeSettings(seq_len=cfg.seq_len, sample_start=cfg.sample_start,
                          bos_id=_special_id(tok, cfg.bos, cfg.bos_token, "bos"),
                          eos_id=_special_id(tok, cfg.eos, cfg.eos_token, "eos"), dtype=token_dtype(len(tok)).name)


def _start_pool(cfg: PackConfig, scratch: Path, local_ranks: int | None) -> WorkerPool:
    """This rank's tokenizer workers: processes on a faster allocator when one is found, threads
    of this process otherwise (or when one worker is asked for)."""
    allocator = find_allocator(cfg.allocator)
    cores = cores_per_local_rank(local_ranks)
    workers = plan_workers(cfg.workers, allocator, cores)
    if workers == 1 and allocator and cfg.allocator != "auto":
        log.warning("allocator %s is not used: with workers=1 this process tokenizes in its own threads", allocator)
    pool = WorkerPool(workers, max(1, cores // workers), scratch, allocator)   # drops the allocator for 1 worker
    log.info("tokenizing in %s, %s", f"{workers} worker processes" if workers > 1 else "threads of this process",
             f"allocator {pool.allocator}" if pool.allocator else "the system allocator")
    return pool


def _pack_rank(cfg: PackConfig, world: World, input_dir: Path) -> RankResult:
    """Pack this rank's shards (k % world.size == rank), skipping those already done."""
    from lingraft.data_prep.clean_stage import read_clean_parts  # validates the parts' checksums
    from lingraft.vocabulary.loading import load_tokenizer

    out = Path(cfg.out)
    parts = read_clean_parts(input_dir)
    mine = [k for k in range(len(parts)) if k % world.size == world.rank]
    # Workers start first: they start up while this process loads the tokenizer.
    with _start_pool(cfg, out, world.local_size) as pool:
        part_sha = {p["file"]: p["sha256"] for p in read_manifest(input_dir)["outputs"]["parts"]}
        tok = load_tokenizer(cfg.tokenizer)
        backend = tok.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        settings = _encode_settings(cfg, tok)
        tokenizer_json = backend.to_str()
        pool.load(backend, tokenizer_json)
        fingerprint = pool.fingerprint()    # for the manifest (a full parse of the JSON)
        tokenizer_sha = sha256_text(tokenizer_json)
        tasks = [ShardTask(k, parts[k], out, _shard_key(settings, tokenizer_sha, part_sha[parts[k].name]))
                 for k in mine]
        records = [rec for t in tasks if (rec := read_valid_done(out, shard_name(t.index), t.key))]
        if records:
            log.info("resuming: %d of %d shards already done", len(records), len(tasks))
        done = {r["shard"] for r in records}
        todo = [t for t in tasks if shard_name(t.index) not in done]
        cut_chars = cfg.split_chars if cuts_at_paragraphs(seam_facts(backend)) else None
        if cut_chars is None:
            log.info("documents are tokenized whole: cutting them is exact only for byte-level BPE "
                     "tokenizers with a cl100k/Llama-3 or Qwen2 pre-tokenizer (data_prep/pack_seams.py)")
        records += pack_shards(todo, settings, pool, batch_chars=cfg.batch_chars, cut_chars=cut_chars)
        fingerprint = fingerprint.result()
    return RankResult(records, settings, fingerprint, len(tok), pool.workers, pool.allocator)


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
                            "ranks_per_node": world.local_size or 1, "workers": mine.workers,
                            "allocator": mine.allocator, "tokens_per_s": round(packed_tokens / max(seconds, 1e-9))}
        manifest.write(out)
    world.barrier()
    return out

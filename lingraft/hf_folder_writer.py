"""Streaming safetensors writer: copy a checkpoint shard by shard, replacing a few tensors.

Only the replaced tensors (embedding and head tables) live in memory; every other tensor's
bytes go from the source shard to the output with `os.copy_file_range` (a read/write loop
where the kernel refuses), so peak memory stays near the tables, whatever the model size.
Each output shard's sha256 is computed from the bytes being written, on other cores.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from lingraft.atomic import write_json
from lingraft.hf_folder import CHECKSUM_KEY, INDEX_FILE, SINGLE_FILE, Checkpoint
from lingraft.errors import LingraftError
from lingraft.hashing import remember, sha256_file
from lingraft.log import get_logger, progress

if TYPE_CHECKING:
    import torch

log = get_logger("checkpoint")
_COPY_CHUNK = 16 << 20
_HASH_CHUNK = 4 << 20
# Shards hashed at once: past a few, page-cache or disk bandwidth, not cores, is the limit.
HASH_WORKERS = min(os.cpu_count() or 2, 8)


def _dtype_code(tensor: "torch.Tensor") -> str:
    code = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(tensor.dtype)[6:])
    if code is None:
        raise LingraftError(f"embedding tables must be floating point, got {tensor.dtype}")
    return code


def _plan_shards(units: list[list[tuple[str, int]]], max_shard_bytes: int) -> list[list[str]]:
    """Cut tensors, in order, into shards of at most `max_shard_bytes` (a bigger tensor gets its own).

    A unit is the run of tensors that came from one source shard. Units are packed whole when
    they fit, so a model already sharded under the limit keeps its shard boundaries: a source
    shard none of whose tensors change is then re-written byte for byte, checksum included.
    """
    shards: list[list[str]] = [[]]
    size = 0
    for unit in units:
        unit_bytes = sum(nbytes for _, nbytes in unit)
        if shards[-1] and size + unit_bytes > max_shard_bytes:
            shards.append([])
            size = 0
        for name, nbytes in unit:       # whole when it fits, else greedily tensor by tensor
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
    return shards


def _source_units(ckpt: Checkpoint, names: Iterable[str], nbytes: Mapping[str, int]) -> list[list[tuple[str, int]]]:
    units: list[list[tuple[str, int]]] = []
    last = None
    for name in names:
        shard = ckpt.tensors[name].shard if name in ckpt.tensors else None
        if not units or shard != last:
            units.append([])
            last = shard
        units[-1].append((name, nbytes[name]))
    return units


def _verbatim_source(ckpt: Checkpoint, members: list[str], replaced: set[str]) -> Path | None:
    """The source shard that `members` reproduce exactly (same tensors, same order, none replaced)."""
    first = ckpt.tensors.get(members[0])
    if first is None or replaced & set(members):
        return None
    in_source = [t.name for t in sorted((t for t in ckpt.tensors.values() if t.shard == first.shard),
                                        key=lambda t: t.offset)]
    return first.shard if in_source == members else None


def _hash_segments(segments: list[Any]) -> str:
    """sha256 of the concatenation of `segments`: in-memory buffers, or (file, offset, nbytes)
    ranges read straight from the source shards. It is the hash of the shard being written,
    computed from the same bytes the writer sends, so no second pass reads the output."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(_HASH_CHUNK))
    for seg in segments:
        if not isinstance(seg, tuple):
            h.update(seg)
            continue
        path, offset, nbytes = seg
        fd = os.open(path, os.O_RDONLY)
        try:
            while nbytes:
                got = os.preadv(fd, [buf[:min(nbytes, _HASH_CHUNK)]], offset)
                if got == 0:
                    raise LingraftError(f"{path}: shard ended early while hashing (truncated during the run?)")
                h.update(buf[:got])
                offset += got
                nbytes -= got
        finally:
            os.close(fd)
    return h.hexdigest()


def _copy_range(src: BinaryIO, offset: int, nbytes: int, dst: BinaryIO, bar: Any) -> None:
    """Copy `nbytes` at `offset` of `src` to the end of `dst` (unbuffered).

    copy_file_range keeps the bytes in the kernel (no trip through Python), which is what makes
    the writer run near `cp` speed; filesystem pairs that do not support it fall back to
    read/write.
    """
    while nbytes:
        try:
            moved = os.copy_file_range(src.fileno(), dst.fileno(), min(nbytes, 1 << 30), offset)
        except OSError:      # EXDEV on old kernels, EOPNOTSUPP/EINVAL on some filesystems
            moved = _read_write(src, offset, min(nbytes, _COPY_CHUNK), dst)
        if moved == 0:
            raise LingraftError(f"{src.name}: shard ended early while copying (truncated during the run?)")
        offset += moved
        nbytes -= moved
        bar.update(moved)


def _read_write(src: BinaryIO, offset: int, nbytes: int, dst: BinaryIO) -> int:
    src.seek(offset)
    chunk = src.read(nbytes)
    _write_all(dst, chunk)
    return len(chunk)


def _write_all(dst: BinaryIO, data: Any) -> None:
    """An unbuffered write may be short; loop until every byte is out."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[dst.write(view):]


def write_checkpoint(ckpt: Checkpoint, out_dir: Path, replace: Mapping[str, "torch.Tensor"],
                     max_shard_bytes: int = 5 << 30, extra: Mapping[str, "torch.Tensor"] | None = None,
                     drop: Iterable[str] = ()) -> dict[str, str]:
    """Write `ckpt`'s tensors into `out_dir` (an atomic temp folder), with `replace` substituted,
    the tensors named in `drop` left out and `extra` (new names) appended at the end.

    Returns {shard file name: sha256}. Tensors keep their source order and dtype. Memory use
    is the replaced tables plus one small buffer per hashing thread, whatever the shard sizes.
    """
    extra, drop = dict(extra or {}), set(drop)
    unknown = sorted((set(replace) | drop) - set(ckpt.tensors))
    if unknown:
        raise LingraftError(f"cannot replace or drop {unknown[0]}: not in the checkpoint")
    clash = sorted(set(extra) & set(ckpt.tensors))
    if clash:
        raise LingraftError(f"cannot add {clash[0]}: the checkpoint already has it (replace it instead)")
    new_tensors = {**replace, **extra}
    order = [*(n for n in ckpt.tensors if n not in drop), *extra]
    layout = _layout(ckpt, order, new_tensors)
    plan = _plan_shards(_source_units(ckpt, order, {n: e[2] for n, e in layout.items()}), max_shard_bytes)
    shards = ((name, members, layout) for name, members in zip(_shard_names(len(plan)), plan))
    return _write_shards(ckpt, out_dir, shards, sum(entry[2] for entry in layout.values()))


def write_checkpoint_per_shard(ckpt: Checkpoint, out_dir: Path,
                               replacements: Callable[[list[str]], Mapping[str, "torch.Tensor"]]) -> dict[str, str]:
    """Write `ckpt` with its own sharding, asking `replacements(shard's tensor names)` for each
    shard's new tensors just before that shard is written: memory holds one shard's
    replacements, however many tensors change over the whole model (skill packs touch every
    layer). Returns {shard file name: sha256}, like `write_checkpoint`."""
    plan = [[t.name for t in sorted((t for t in ckpt.tensors.values() if t.shard == shard), key=lambda t: t.offset)]
            for shard in ckpt.shards]
    unknown = set()

    def lazily() -> Iterator[tuple[str, list[str], dict[str, tuple[str, list[int], int, Any]]]]:
        for name, members in zip(_shard_names(len(plan)), plan):
            replace = dict(replacements(members))
            unknown.update(set(replace) - set(members))
            yield name, members, _layout(ckpt, members, replace)

    checksums = _write_shards(ckpt, out_dir, lazily(), sum(i.nbytes for i in ckpt.tensors.values()))
    if unknown:
        raise LingraftError(f"cannot replace {sorted(unknown)[0]}: not in the shard being written")
    return checksums


def _layout(ckpt: Checkpoint, order: Iterable[str], new_tensors: Mapping[str, "torch.Tensor"]
            ) -> dict[str, tuple[str, list[int], int, Any]]:
    """name -> (dtype code, shape, nbytes, the bytes of a new tensor or None for a copied one)."""
    import torch
    layout: dict[str, tuple[str, list[int], int, Any]] = {}
    for name in order:
        if name in new_tensors:
            table = new_tensors[name].contiguous()
            data = table.view(-1).view(torch.uint8).numpy()    # zero-copy view of the raw bytes
            layout[name] = (_dtype_code(table), list(table.shape), data.nbytes, data)
        else:
            info = ckpt.tensors[name]
            layout[name] = (info.dtype, list(info.shape), info.nbytes, None)
    return layout


def _shard_names(count: int) -> list[str]:
    return [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _write_shards(ckpt: Checkpoint, out_dir: Path,
                  shards: Iterable[tuple[str, list[str], Mapping[str, tuple[str, list[int], int, Any]]]],
                  progress_total: int) -> dict[str, str]:
    """Write each (file name, tensor names, layout) shard, then the index when there are several."""
    start, total, weight_map = time.perf_counter(), 0, {}
    # Every shard's sha256 is computed on other cores while it is written, from the bytes the
    # writer sends (tables in memory, ranges of the source shards): sha256 runs at about half
    # of copy speed, so hashing inline, or reading each output back, would halve throughput.
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as hashers:
        pending = {}
        with progress(total=progress_total, unit="B", unit_scale=True, desc="writing shards") as bar:
            for shard_name, members, layout in shards:
                weight_map.update({name: shard_name for name in members})
                total += sum(layout[n][2] for n in members)
                new_names = {n for n in members if layout[n][3] is not None}
                source = _verbatim_source(ckpt, members, new_names)
                if source is not None:     # the same file: its checksum is the source's (often known)
                    pending[shard_name] = hashers.submit(sha256_file, source)
                    _copy_file(source, out_dir / shard_name, bar)
                    continue
                header = _header(members, layout)
                pending[shard_name] = hashers.submit(_hash_segments, [header, *(
                    layout[n][3] if layout[n][3] is not None else
                    (ckpt.tensors[n].shard, ckpt.tensors[n].offset, ckpt.tensors[n].nbytes) for n in members)])
                _write_shard(out_dir / shard_name, header, members, layout, ckpt, bar)
        checksums = {shard_name: future.result() for shard_name, future in pending.items()}
    for shard_name, digest in checksums.items():
        remember(out_dir / shard_name, digest)      # a later stage in this process verifies for free
    seconds = time.perf_counter() - start
    log.info("wrote %d shard(s), %.2f GB in %.1f s (%.0f MB/s)", len(checksums), total / 1e9, seconds,
             total / 1e6 / max(seconds, 1e-9))
    if len(checksums) > 1:
        write_json(out_dir / INDEX_FILE, {"metadata": {"total_size": total, CHECKSUM_KEY: checksums},
                                          "weight_map": weight_map})
    return checksums


def _header(members: list[str], layout: Mapping[str, tuple[str, list[int], int, Any]]) -> bytes:
    """A safetensors header (length prefix included) for `members`, laid out in order."""
    header, offset = {}, 0
    for name in members:
        code, shape, nbytes, _ = layout[name]
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)   # keep tensor data 8-byte aligned, as the library does
    return struct.pack("<Q", len(raw)) + raw


def _copy_file(source: Path, path: Path, bar: Any) -> None:
    with open(source, "rb", buffering=0) as src, open(path, "wb", buffering=0) as dst:
        _copy_range(src, 0, os.fstat(src.fileno()).st_size, dst, bar)


def _write_shard(path: Path, header: bytes, members: list[str],
                 layout: Mapping[str, tuple[str, list[int], int, Any]], ckpt: Checkpoint, bar: Any) -> None:
    """One safetensors file: header, then each tensor's bytes (copied or from a table)."""
    sources: dict[Path, BinaryIO] = {}
    try:
        with open(path, "wb", buffering=0) as dst:     # unbuffered: copy_file_range writes at the fd's position
            _write_all(dst, header)
            for name in members:
                data = layout[name][3]
                if data is not None:
                    _write_all(dst, data)
                    bar.update(data.nbytes)
                    continue
                info = ckpt.tensors[name]
                if info.shard not in sources:
                    sources[info.shard] = open(info.shard, "rb", buffering=0)
                _copy_range(sources[info.shard], info.offset, info.nbytes, dst, bar)
    finally:
        for fh in sources.values():
            fh.close()

"""On-disk skill packs: one folder, safetensors only, every file checksummed in the manifest.

    pack/
      pack.safetensors        every module's encoded delta, as tensors named "<module>/<part>"
      token_map.safetensors   only when the pack replaces tables (a new vocabulary)
      model_files/            the tuned model's config, generation config, tokenizer, chat template
      manifest.json           written last: base and tuned fingerprints, each module's policy,
                              rank, bands and measured size, and the sha256 of every file above

Module policies (the "policy" of a manifest module record):
    unchanged  tuned equals base; nothing stored
    lowrank    s, and per band of rank the rows of Uᵀ and Vᵀ (int8 / int4 codes + float32 group
               scales, or float16 / float32 values)
    dense      the delta (vectors, and matrices whose low-rank form would not be smaller)
    rows       a table's changed rows: their ids and deltas
    Dense and row deltas are stored wider than the model (`delta_dtype`: float32 for 16-bit
    models, float64 for float32 ones): in the model's own dtype the difference of two weights is
    rounded, and base + delta no longer gives the tuned weight back bit for bit.
    table      a table of a new vocabulary, whole, plus the base table's rows the token map
               reads ("ref"), so the pack can be converted onto a sibling model (LEP) alone

A model's *fingerprint* is a sha256 over its tensors' names, dtypes, shapes and bytes in name
order: independent of sharding and file names, so a pack matches a re-saved base.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lingraft.hf_folder import Checkpoint
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_file
from lingraft.log import progress
from lingraft.manifest import MANIFEST_NAME
from lingraft.paths import require_inside
from lingraft.propagate.skillpack.skillpack_math import (
    FLOAT_DTYPES,
    INT_BITS,
    LowRank,
    Quantized,
    dequantize_rows,
    quantize_rows,
)
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap

FORMAT = "lingraft.skillpack/1"
STAGE = "skillpack create"
PACK_FILE = "pack.safetensors"
MODEL_FILES = "model_files"
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_READ_CHUNK = 1 << 24


def dtype_code(dtype: torch.dtype) -> str:
    for code, value in TORCH_DTYPES.items():
        if value == dtype:
            return code
    raise LingraftError(f"skill packs handle floating-point weights, got {dtype}")


# -- fingerprints --------------------------------------------------------------------------------
def tensor_digests(ckpt: Checkpoint, desc: str) -> dict[str, str]:
    """sha256 of every tensor's raw bytes, read straight from the shards (no deserialisation)."""
    digests: dict[str, str] = {}
    total = sum(info.nbytes for info in ckpt.tensors.values())
    with progress(total=total, unit="B", unit_scale=True, desc=desc) as bar:
        for shard in ckpt.shards:
            with open(shard, "rb") as fh:
                for info in (i for i in ckpt.tensors.values() if i.shard == shard):
                    fh.seek(info.offset)
                    digest, left = hashlib.sha256(), info.nbytes
                    while left:
                        chunk = fh.read(min(left, _READ_CHUNK))
                        if not chunk:
                            raise LingraftError(f"{shard}: shard ended early while hashing {info.name}")
                        digest.update(chunk)
                        left -= len(chunk)
                        bar.update(len(chunk))
                    digests[info.name] = digest.hexdigest()
    return digests


def model_fingerprint(ckpt: Checkpoint, digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(ckpt.tensors):
        info = ckpt.tensors[name]
        h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0{digests[name]}\n".encode())
    return h.hexdigest()


def tensor_layout(ckpt: Checkpoint) -> dict[str, list[Any]]:
    """{name: [dtype code, shape]}: what a pack records of its base, to explain a mismatch."""
    return {name: [info.dtype, list(info.shape)] for name, info in ckpt.tensors.items()}


# -- encoding one module -------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """One module's tensors (keys "<module>/<part>") and its manifest record."""
    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]


def _finish(name: str, policy: str, shape: tuple[int, ...], dtype: torch.dtype,
            tensors: dict[str, torch.Tensor], **fields: Any) -> Encoded:
    tensors = {f"{name}/{part}": t.contiguous() for part, t in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    dense = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return Encoded(tensors, {"policy": policy, "shape": list(shape), "dtype": dtype_code(dtype),
                             "bytes": size, "dense_bytes": dense, **fields})


def encode_unchanged(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Encoded:
    return _finish(name, "unchanged", shape, dtype, {})


def delta_dtype(dtype: torch.dtype) -> torch.dtype:
    """A dtype in which ``tuned − base`` of two `dtype` weights is exact (or, for float64, as
    close as it gets), so that adding it back and rounding to `dtype` restores `tuned`."""
    return torch.float32 if torch.finfo(dtype).bits <= 16 else torch.float64


def encode_dense(name: str, delta: torch.Tensor, dtype: torch.dtype, **fields: Any) -> Encoded:
    return _finish(name, "dense", tuple(delta.shape), dtype, {"delta": delta.to(delta_dtype(dtype))}, **fields)


def _encode_factor(rows: torch.Tensor, precision: str, group_size: int) -> dict[str, torch.Tensor]:
    if precision in FLOAT_DTYPES:
        return {"": rows.to(FLOAT_DTYPES[precision])}
    q = quantize_rows(rows, INT_BITS[precision], group_size)
    return {".q": q.codes, ".scale": q.scales}


def encode_lowrank(name: str, low: LowRank, bands: list[tuple[int, str]], group_size: int,
                   dtype: torch.dtype) -> Encoded:
    """`bands`: (rank count, precision) in order of decreasing singular value, summing to the rank."""
    if sum(count for count, _ in bands) != low.rank:
        raise LingraftError(f"{name}: bands cover {sum(c for c, _ in bands)} vectors, the rank is {low.rank}")
    tensors: dict[str, torch.Tensor] = {"s": low.s.to(torch.float32)}
    start, records = 0, []
    for k, (count, precision) in enumerate(b for b in bands if b[0]):
        for side, factor in (("u", low.u.T), ("v", low.vt)):
            for suffix, t in _encode_factor(factor[start:start + count], precision, group_size).items():
                tensors[f"{side}{k}{suffix}"] = t
        records.append({"rank": count, "precision": precision})
        start += count
    shape = (low.u.shape[0], low.vt.shape[1])
    return _finish(name, "lowrank", shape, dtype, tensors, rank=low.rank, bands=records,
                   group_size=group_size, energy_kept=low.energy_kept)


def encode_rows(name: str, ids: torch.Tensor, deltas: torch.Tensor, shape: tuple[int, ...],
                dtype: torch.dtype) -> Encoded:
    return _finish(name, "rows", shape, dtype, {"ids": ids.to(torch.int64), "delta": deltas.to(delta_dtype(dtype))},
                   rows=int(ids.numel()))


def encode_table(name: str, table: torch.Tensor, token_map: TokenMap, base_table: torch.Tensor) -> Encoded:
    """A new-vocabulary table, plus the base rows its token map reads (for conversion onto a sibling)."""
    ref_ids = torch.unique(token_map.indices)
    return _finish(name, "table", tuple(table.shape), table.dtype,
                   {"table": table, "ref_ids": ref_ids, "ref": base_table[ref_ids]},
                   base_rows=int(base_table.shape[0]), base_dtype=dtype_code(base_table.dtype))


# -- decoding ------------------------------------------------------------------------------------
def _decode_factor(read: Callable[[str], torch.Tensor], key: str, precision: str, cols: int,
                   group_size: int) -> torch.Tensor:
    if precision in FLOAT_DTYPES:
        return read(key).to(torch.float32)
    codes, scales = read(key + ".q"), read(key + ".scale")
    width = cols if group_size == 0 else min(group_size, cols)
    return dequantize_rows(Quantized(codes, scales, INT_BITS[precision], cols, width))


def decode_lowrank(read: Callable[[str], torch.Tensor], name: str, record: dict[str, Any]) -> torch.Tensor:
    """The float32 delta ``Uᵀᵀ diag(s) Vᵀ`` of a lowrank record."""
    rows, cols = record["shape"]
    s = read(f"{name}/s").to(torch.float32)
    delta = torch.zeros(rows, cols, dtype=torch.float32)
    start = 0
    for k, band in enumerate(record["bands"]):
        count = band["rank"]
        ut = _decode_factor(read, f"{name}/u{k}", band["precision"], rows, record["group_size"])
        vt = _decode_factor(read, f"{name}/v{k}", band["precision"], cols, record["group_size"])
        delta.addmm_(ut.T * s[start:start + count], vt)
        start += count
    return delta


# -- the pack folder -----------------------------------------------------------------------------
def file_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in a pack folder but the manifest."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}


class SkillPack:
    """A pack folder opened for reading: the manifest, checked files, and lazy tensor access."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_NAME
        if not path.is_file():
            raise LingraftError(f"{path}: missing (not a skill pack, or `skillpack create` did not finish)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            outputs = manifest["outputs"]
            self.files: dict[str, str] = dict(outputs["files"])
            self.modules: dict[str, dict[str, Any]] = outputs["modules"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise LingraftError(f"{path}: corrupt skill pack manifest") from None
        if manifest.get("stage") != STAGE or outputs.get("format") != FORMAT:
            raise LingraftError(f"{path}: not a {FORMAT} manifest (stage {manifest.get('stage')!r}, "
                                f"format {outputs.get('format')!r})")
        self.manifest = manifest
        self.outputs: dict[str, Any] = outputs
        self._verify_files()
        self._reader: Any = None

    def _verify_files(self) -> None:
        for rel, expected in self.files.items():
            path = require_inside(self.folder / rel, self.folder, f"{MANIFEST_NAME} lists file")
            if not path.is_file():
                raise LingraftError(f"{path}: missing skill pack file (listed in {MANIFEST_NAME})")
            if sha256_file(path) != expected:
                raise LingraftError(f"{path}: corrupt skill pack file (sha256 differs from {MANIFEST_NAME})")

    # -- identity ----------------------------------------------------------------------------
    @property
    def base_fingerprint(self) -> str:
        return self.outputs["base"]["fingerprint"]

    @property
    def tuned_fingerprint(self) -> str:
        return self.outputs["tuned"]["fingerprint"]

    @property
    def kind(self) -> str:
        return self.outputs["kind"]

    @property
    def replaces_tables(self) -> bool:
        return any(r["policy"] == "table" for r in self.modules.values())

    @property
    def model_files(self) -> Path:
        return self.folder / MODEL_FILES

    def token_map(self) -> TokenMap:
        path = self.folder / TOKEN_MAP_NAME
        if not path.is_file():
            raise LingraftError(f"{path}: this pack replaces no table, so it has no token map")
        return TokenMap.load(path)

    # -- tensors ----------------------------------------------------------------------------
    def read(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open
        path = self.folder / PACK_FILE
        try:
            if self._reader is None:
                self._reader = safe_open(str(path), framework="pt")
            return self._reader.get_tensor(key)
        except SafetensorError as exc:
            raise LingraftError(f"{path}: cannot read {key} ({exc})") from None

    def delta(self, name: str) -> torch.Tensor:
        """A lowrank module's delta in float32, a dense one's as stored (at least float32)."""
        record = self.modules[name]
        if record["policy"] == "lowrank":
            return decode_lowrank(self.read, name, record)
        if record["policy"] == "dense":
            stored = self.read(f"{name}/delta")
            return stored.to(torch.promote_types(torch.float32, stored.dtype))
        raise LingraftError(f"{name}: a {record['policy']} module has no dense delta")

    def row_delta(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read(f"{name}/ids"), self.read(f"{name}/delta")

    def table(self, name: str) -> torch.Tensor:
        return self.read(f"{name}/table")

    def base_table(self, name: str) -> torch.Tensor:
        """The base table with the rows the token map reads, zeros elsewhere (never read by it)."""
        record = self.modules[name]
        ref_ids, ref = self.read(f"{name}/ref_ids"), self.read(f"{name}/ref")
        full = torch.zeros(record["base_rows"], ref.shape[1], dtype=ref.dtype)
        full[ref_ids] = ref
        return full

    def nbytes(self) -> int:
        return sum((self.folder / rel).stat().st_size for rel in self.files if not rel.startswith(MODEL_FILES))


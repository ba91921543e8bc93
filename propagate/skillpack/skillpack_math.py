"""The math of skill packs, as pure tensor functions (no files, no manifests).

A skill pack stores ``tuned − base`` per module (after GraftLLM, 2025). A weight matrix's
delta is kept as a truncated SVD ``Δ ≈ U diag(s) Vᵀ`` whose rank is the smallest that keeps a
fraction β of the singular-value energy ``Σ s²``; the singular vectors are then quantized in
bands of rank (the leading vectors carry most of the energy, so they get more bits).
Quantization is symmetric per group of `group_size` consecutive entries of one singular
vector, with a float32 scale per group; int4 codes are packed two per byte.

Embedding and head tables are different: fine-tuning touches only the rows of the tokens it
saw, so their delta is a set of changed rows (`changed_rows`), stored exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lingraft.errors import LingraftError

# The band precisions (skillpack_config.Precision): integer codes, or plain floats.
INT_BITS = {"int8": 8, "int4": 4}
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Cumulative energies are float64 sums; a β that equals a partial sum exactly (β = 25/30) must
# still select that rank, not the next one, despite the last-bit rounding of the division.
_ENERGY_SLACK = 1e-12


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r with ``Σ_{i<r} s_i² ≥ energy · Σ s²`` (singular values in descending order).

    energy = 1 keeps every non-zero singular value; a zero spectrum gives rank 0.
    """
    if not 0.0 < energy <= 1.0:
        raise LingraftError(f"energy fraction must be in (0, 1], got {energy}")
    squares = singular_values.detach().to(torch.float64) ** 2
    cumulative = torch.cumsum(squares, dim=0)
    if cumulative.numel() == 0 or float(cumulative[-1]) == 0.0:
        return 0
    target = energy * float(cumulative[-1]) * (1.0 - _ENERGY_SLACK)
    return int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))[0]) + 1


@dataclass(frozen=True)
class LowRank:
    """``delta ≈ u @ diag(s) @ vt``: u (m, r) and vt (r, n) with orthonormal columns / rows."""
    u: torch.Tensor
    s: torch.Tensor
    vt: torch.Tensor
    energy_kept: float          # Σ_{i<r} s_i² / Σ s², in [0, 1]

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    def product(self) -> torch.Tensor:
        return (self.u * self.s) @ self.vt


def truncated_svd(delta: torch.Tensor, energy: float) -> LowRank:
    """The energy-truncated SVD of a 2-D delta, in float32 (float64 for a float64 delta)."""
    if delta.ndim != 2:
        raise LingraftError(f"truncated SVD needs a matrix, got shape {tuple(delta.shape)}")
    compute = torch.float64 if delta.dtype == torch.float64 else torch.float32
    u, s, vt = torch.linalg.svd(delta.to(compute), full_matrices=False)
    rank = energy_rank(s, energy)
    total = float((s.double() ** 2).sum())
    kept = float((s[:rank].double() ** 2).sum()) / total if total > 0 else 1.0
    return LowRank(u=u[:, :rank].contiguous(), s=s[:rank].contiguous(), vt=vt[:rank].contiguous(),
                   energy_kept=kept)


def band_ranks(rank: int, top_fraction: float) -> tuple[int, int]:
    """(leading vectors in the top band, the rest): ceil(top_fraction · rank) lead."""
    if not 0.0 <= top_fraction <= 1.0:
        raise LingraftError(f"top band fraction must be in [0, 1], got {top_fraction}")
    top = min(rank, math.ceil(top_fraction * rank))
    return top, rank - top


# -- int4 packing ----------------------------------------------------------------------------
def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], shape (rows, cols) -> uint8 (rows, ceil(cols / 2)).

    Each value is stored as its two's-complement nibble; column 2k goes to the low nibble and
    column 2k+1 to the high nibble of byte k (an odd last column pairs with a zero nibble).
    """
    if values.dtype != torch.int8 or values.ndim != 2:
        raise LingraftError(f"pack_int4 takes a 2-D int8 tensor, got {values.dtype} {tuple(values.shape)}")
    if values.numel() and (int(values.min()) < -8 or int(values.max()) > 7):
        raise LingraftError("pack_int4: values outside [-8, 7]")
    nibbles = (values.to(torch.int16) & 0xF).to(torch.uint8)
    if nibbles.shape[1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 (rows, ceil(cols / 2)) -> int8 (rows, cols)."""
    if packed.dtype != torch.uint8 or packed.ndim != 2 or packed.shape[1] != (cols + 1) // 2:
        raise LingraftError(f"unpack_int4: expected uint8 (rows, {(cols + 1) // 2}), got "
                            f"{packed.dtype} {tuple(packed.shape)}")
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=2).reshape(packed.shape[0], -1)[:, :cols]
    signed = nibbles.to(torch.int16)
    return torch.where(signed >= 8, signed - 16, signed).to(torch.int8)


# -- group quantization ----------------------------------------------------------------------
@dataclass(frozen=True)
class Quantized:
    """Rows quantized symmetrically per group: ``x ≈ code · scale[row, col // group_size]``."""
    codes: torch.Tensor     # int8 (rows, cols), or uint8 (rows, ceil(cols / 2)) for int4
    scales: torch.Tensor    # float32 (rows, groups)
    bits: int
    cols: int
    group_size: int         # entries per scale along a row

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def _group_width(cols: int, group_size: int) -> int:
    """group_size 0 means one group per row."""
    if group_size < 0:
        raise LingraftError(f"group size must be >= 0, got {group_size}")
    return cols if group_size == 0 else min(group_size, cols)


def _grouped(x: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, cols) -> (rows, groups, width), the last group zero-padded."""
    pad = -x.shape[1] % width
    return torch.nn.functional.pad(x, (0, pad)).reshape(x.shape[0], -1, width)


def quantize_rows(x: torch.Tensor, bits: int, group_size: int) -> Quantized:
    """Symmetric round-to-nearest quantization to int8 or int4 (codes in ±(2^(bits-1) − 1)).

    Every entry's error is at most half its group's scale, ``max|group| / (2^(bits-1) − 1) / 2``.
    """
    if bits not in (4, 8):
        raise LingraftError(f"quantization supports 4 or 8 bits, got {bits}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise LingraftError(f"quantize_rows takes a non-empty 2-D tensor, got {tuple(x.shape)}")
    qmax = 2 ** (bits - 1) - 1
    width = _group_width(x.shape[1], group_size)
    groups = _grouped(x.to(torch.float32), width)
    scales = groups.abs().amax(dim=2) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))   # an all-zero group codes to 0
    codes = torch.round(groups / scales[:, :, None]).clamp_(-qmax, qmax).to(torch.int8)
    codes = codes.reshape(x.shape[0], -1)[:, :x.shape[1]].contiguous()
    if bits == 4:
        codes = pack_int4(codes)
    return Quantized(codes=codes, scales=scales.contiguous(), bits=bits, cols=x.shape[1], group_size=width)


def dequantize_rows(q: Quantized) -> torch.Tensor:
    """float32 (rows, cols) from `quantize_rows`' output."""
    codes = unpack_int4(q.codes, q.cols) if q.bits == 4 else q.codes
    groups = _grouped(codes.to(torch.float32), q.group_size) * q.scales[:, :, None]
    return groups.reshape(codes.shape[0], -1)[:, :q.cols]


# -- tables ------------------------------------------------------------------------------------
def changed_rows(delta: torch.Tensor) -> torch.Tensor:
    """int64 ids of the rows of a table delta with any non-zero entry."""
    if delta.ndim != 2:
        raise LingraftError(f"changed_rows needs a table, got shape {tuple(delta.shape)}")
    return (delta != 0).any(dim=1).nonzero().flatten()


def error_norms(approx: torch.Tensor, exact: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``(||approx − exact||_F, ||reference||_F)`` in float64: a relative error's two norms, kept
    apart so a caller can also sum their squares over modules."""
    error = float(torch.linalg.vector_norm((approx.double() - exact.double()).flatten()))
    return error, float(torch.linalg.vector_norm(reference.double().flatten()))


def relative_error(error: float, scale: float) -> float:
    """``error / scale`` of `error_norms`' output (0 when both norms are 0)."""
    if scale == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / scale


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` summed in the wider of float32, weight's and delta's dtypes, stored in weight's dtype."""
    if weight.shape != delta.shape:
        raise LingraftError(f"delta of shape {tuple(delta.shape)} does not fit a weight of shape {tuple(weight.shape)}")
    compute = torch.promote_types(torch.promote_types(weight.dtype, delta.dtype), torch.float32)
    return (weight.to(compute) + delta.to(compute)).to(weight.dtype)


def add_row_delta(table: torch.Tensor, ids: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """A copy of `table` with ``deltas`` added to rows `ids`."""
    if ids.numel() and int(ids.max()) >= table.shape[0]:
        raise LingraftError(f"row delta touches row {int(ids.max())} of a table with {table.shape[0]} rows")
    out = table.clone()
    out[ids] = add_delta(table[ids], deltas)
    return out

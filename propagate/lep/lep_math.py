"""The math of Learned Embedding Propagation, as pure tensor functions (no files, no tokenizers).

An instruct model I was fine-tuned from a base B; A is B with a new vocabulary whose tables
were trained. LEP assumes fine-tuning moved the embedding space by (roughly) a linear map
and estimates it, ``D = argmin ||X D - Y||`` with X rows of B and Y the same rows of I,
then writes ``E_A · D`` into I.

The rows X and Y are always "T applied to a table": for *conversion* T is the token map of
initialisation (new tokens as combinations of old ones); for *overlap* T selects the tokens
both vocabularies share. Rows are produced in blocks, in float64, so an 8B model's
128k x 4096 tables never exist in float64 all at once: the fit accumulates the d x d normal
equations ``XᵀX D = XᵀY`` block by block and solves that small system with
``torch.linalg.lstsq`` (gelsy: a rank-revealing complete orthogonal factorisation, so too
few or collinear rows still give the minimum-norm map; as accurate as gelsd here and 10x
faster at d = 2048).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from lingraft.errors import LingraftError
from lingraft.vocabulary.token_map import FALLBACK, PROVENANCES, TokenMap

BLOCK_ROWS = 4096
F64 = torch.float64
# Below this squared relative residual the shortcut ||Y||² - 2<D, XᵀY> + <D, XᵀX D> is mostly
# rounding (it subtracts nearly equal numbers), so the residual is measured in a second pass.
_EXACT_RESIDUAL_BELOW = 1e-6

# A re-iterable source of aligned row blocks (X_block, Y_block), both float64.
RowBlocks = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class LinearFit:
    map: torch.Tensor          # (d_in, d_out) float64
    relative_residual: float   # ||X D - Y||_F / ||Y||_F
    rows: int                  # rows the map was fitted on
    rank: int                  # numerical rank of XᵀX

    def summary(self) -> dict[str, float | int]:
        return {"relative_residual": self.relative_residual, "rows": self.rows, "rank": self.rank}


def fit_linear_map(blocks: RowBlocks) -> LinearFit:
    """Least-squares D with X·D ≈ Y over all row blocks, in float64."""
    gram = cross = None
    rows, target_sq = 0, 0.0
    for x, y in blocks():
        if gram is None:
            gram = torch.zeros(x.shape[1], x.shape[1], dtype=F64)
            cross = torch.zeros(x.shape[1], y.shape[1], dtype=F64)
        gram.addmm_(x.T, x)
        cross.addmm_(x.T, y)
        rows += x.shape[0]
        target_sq += float(torch.linalg.matrix_norm(y) ** 2)
    if gram is None or rows == 0:
        raise LingraftError("least-squares fit: no rows to fit the map on")
    solution = torch.linalg.lstsq(gram, cross, driver="gelsy")
    d_map = solution.solution
    if target_sq == 0:
        return LinearFit(map=d_map, relative_residual=0.0, rows=rows, rank=int(solution.rank))
    error_sq = target_sq - 2 * float((d_map * cross).sum()) + float((d_map * (gram @ d_map)).sum())
    if error_sq < _EXACT_RESIDUAL_BELOW * target_sq:
        error_sq = sum(float(torch.linalg.matrix_norm(x @ d_map - y) ** 2) for x, y in blocks())
    residual = max(error_sq, 0.0) ** 0.5 / target_sq ** 0.5
    return LinearFit(map=d_map, relative_residual=residual, rows=rows, rank=int(solution.rank))


def dense_blocks(x: torch.Tensor, y: torch.Tensor, block_rows: int = BLOCK_ROWS) -> RowBlocks:
    """Row blocks of two aligned dense tables (any float dtype), cast to float64 per block."""
    if x.shape[0] != y.shape[0]:
        raise LingraftError(f"least-squares fit: X has {x.shape[0]} rows, Y has {y.shape[0]}")

    def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, x.shape[0], block_rows):
            yield x[start:start + block_rows].to(F64), y[start:start + block_rows].to(F64)
    return blocks


def mapped_rows(token_map: TokenMap, table: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of ``T · table`` in float64; a fallback row (no sources) is zero.

    Same product as `TokenMap.apply`, but only for a block of new tokens and with float64
    accumulation whatever the table's dtype, so bf16 tables are not rounded before the fit.
    """
    lo, hi = int(token_map.indptr[start]), int(token_map.indptr[stop])
    sources = table[token_map.indices[lo:hi]].to(F64) * token_map.weights[lo:hi].to(F64)[:, None]
    counts = token_map.indptr[start + 1:stop + 1] - token_map.indptr[start:stop]
    owner = torch.repeat_interleave(torch.arange(stop - start), counts)
    return torch.zeros(stop - start, table.shape[1], dtype=F64).index_add_(0, owner, sources)


def token_map_blocks(token_map: TokenMap, source: torch.Tensor, target: torch.Tensor,
                     block_rows: int = BLOCK_ROWS) -> RowBlocks:
    """Blocks of (T·source, T·target) over the new tokens that have sources (fallback rows carry
    no information about the map, so they are left out of the fit)."""
    for name, table in (("source", source), ("target", target)):
        if table.shape[0] < token_map.old_vocab:
            raise LingraftError(f"token map is over {token_map.old_vocab} old tokens but the {name} table "
                                f"has {table.shape[0]} rows")
    informative = token_map.provenance != FALLBACK

    def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, token_map.new_vocab, block_rows):
            stop = min(start + block_rows, token_map.new_vocab)
            keep = informative[start:stop]
            if bool(keep.any()):
                yield (mapped_rows(token_map, source, start, stop)[keep],
                       mapped_rows(token_map, target, start, stop)[keep])
    return blocks


def selection_map(new_ids: torch.Tensor, old_ids: torch.Tensor, old_vocab: int) -> TokenMap:
    """A TokenMap whose row k picks old token old_ids[k]: overlap's "shared tokens" as a T."""
    if new_ids.numel() != old_ids.numel():
        raise LingraftError("selection map: new_ids and old_ids differ in length")
    n = old_ids.numel()
    return TokenMap(indptr=torch.arange(n + 1, dtype=torch.int64), indices=old_ids.to(torch.int64),
                    weights=torch.ones(n, dtype=torch.float32),
                    provenance=torch.full((n,), PROVENANCES.index("kept"), dtype=torch.uint8), old_vocab=old_vocab)


def apply_map(table: torch.Tensor, d_map: torch.Tensor, out_dtype: torch.dtype,
              block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """``table · D`` block by block, stored as `out_dtype`.

    The product runs in float64 for a float64 output and in float32 otherwise: float32's
    rounding (1e-7) is far below that of the bf16/fp16/fp32 result, at half the cost.
    """
    if table.shape[1] != d_map.shape[0]:
        raise LingraftError(f"cannot apply a {tuple(d_map.shape)} map to a table of width {table.shape[1]}")
    compute = F64 if out_dtype == F64 else torch.float32
    d_map = d_map.to(compute)
    out = torch.empty(table.shape[0], d_map.shape[1], dtype=out_dtype)
    for start in range(0, table.shape[0], block_rows):
        out[start:start + block_rows] = (table[start:start + block_rows].to(compute) @ d_map).to(out_dtype)
    return out


def propagate_table(method: str, adapted: torch.Tensor, out_dtype: torch.dtype,
                    fit_on: TokenMap | None = None, base: torch.Tensor | None = None,
                    instruct: torch.Tensor | None = None) -> tuple[torch.Tensor, LinearFit | None]:
    """One table of the propagated model: A's table as is (swap), or A's table times the map fitted
    on ``(T·base, T·instruct)`` where T is `fit_on` (overlap: the shared-token selection;
    conversion: the initialisation token map)."""
    if method == "swap":
        return adapted.to(out_dtype), None
    if method not in ("overlap", "conversion"):
        raise LingraftError(f"unknown propagation method {method!r} (swap, overlap, conversion)")
    if fit_on is None or base is None or instruct is None:
        raise LingraftError(f"{method}: needs the token map and the base and instruct tables")
    fit = fit_linear_map(token_map_blocks(fit_on, base, instruct))
    return apply_map(adapted, fit.map, out_dtype), fit


def copy_rows(table: torch.Tensor, source: torch.Tensor, table_ids: list[int], source_ids: list[int]) -> None:
    """table[table_ids] = source[source_ids], in place (I's special-token rows into the output)."""
    if table_ids:
        table[torch.tensor(table_ids)] = source[torch.tensor(source_ids)].to(table.dtype)


def grow_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    """`table` with rows appended up to `rows`, each the mean row (a neutral start for an
    added token whose real row is copied in afterwards, or for padding)."""
    if rows <= table.shape[0]:
        return table
    fill = table.to(F64).mean(dim=0).to(table.dtype)
    return torch.cat([table, fill.expand(rows - table.shape[0], -1)], dim=0)

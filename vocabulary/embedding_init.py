"""Pure tensor functions that build new embedding tables (no I/O, no tokenizers)."""
from __future__ import annotations

import torch

from lingraft.errors import LingraftError
from lingraft.vocabulary.token_map import TokenMap


def padded_size(rows: int, multiple: int) -> int:
    """`rows` rounded up to a multiple of `multiple` (1 = no padding)."""
    return -(-rows // multiple) * multiple


def real_rows(table: torch.Tensor, vocab: int) -> torch.Tensor:
    """The rows of `table` that belong to actual tokens; checkpoints often pad past len(tokenizer)."""
    if table.shape[0] < vocab:
        raise LingraftError(f"the tokenizer has {vocab} tokens but the embedding table only {table.shape[0]} rows")
    return table[:vocab]


def mapped_table(token_map: TokenMap, table: torch.Tensor) -> torch.Tensor:
    """``T @ E_old`` over the old table's real rows (its padding rows are never a source)."""
    return token_map.apply(real_rows(table, token_map.old_vocab))


def random_table(table: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """`rows` samples from a normal with the mean and covariance of `table`'s rows.

    The covariance gets a tiny ridge so that a rank-deficient table (d > rows, or dead
    dimensions) still has a Cholesky factor.
    """
    source = table.to(torch.float32)
    mean = source.to(torch.float64).mean(dim=0)
    centred = source - mean.to(torch.float32)
    # float32 products (3x faster than float64 on large tables); the factorisation in float64.
    cov = (centred.T @ centred).to(torch.float64) / max(source.shape[0] - 1, 1)
    ridge = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)
    factor = torch.linalg.cholesky(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows, source.shape[1], generator=generator, dtype=torch.float32)
    return (mean.to(torch.float32) + noise @ factor.T.to(torch.float32)).to(table.dtype)


def table_rows(tokens: int, stored_rows: int, multiple: int, shrink: bool) -> int:
    """Rows of a new table for `tokens` tokens, over a checkpoint table of `stored_rows` rows.

    Checkpoints often carry spare rows past their tokenizer (Qwen2: 151,936 rows for 151,665
    tokens): new tokens take those first, and the table grows (padded to `multiple`) only when
    they run out. It keeps at least the checkpoint's size, which its config, tensor-parallel
    splits and sibling checkpoints assume, unless `shrink` asks for the padded token count.
    """
    if tokens > stored_rows:
        return padded_size(tokens, multiple)
    return min(padded_size(tokens, multiple), stored_rows) if shrink else stored_rows


def pad_rows(table: torch.Tensor, rows: int, fill: torch.Tensor) -> torch.Tensor:
    """Append copies of `fill` (a row) until the table has `rows` rows.

    Padding rows are never produced by the tokenizer, but an LM head still scores them, so
    they get the same neutral value as a token without a source (the caller passes the mean).
    """
    extra = rows - table.shape[0]
    if extra < 0:
        raise LingraftError(f"cannot pad a table of {table.shape[0]} rows to {rows}")
    if not extra:
        return table
    return torch.cat([table, fill.to(table.dtype).expand(extra, -1)], dim=0)


def mean_row(table: torch.Tensor) -> torch.Tensor:
    return table.to(torch.float64 if table.dtype == torch.float64 else torch.float32).mean(dim=0)

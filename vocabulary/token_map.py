"""TokenMap: how each new-vocabulary row is built from old-vocabulary rows.

A TokenMap is a sparse matrix T of shape (new_vocab, old_vocab) in CSR form, plus one
provenance code per new token saying *why* the row looks the way it does. Initialising an
embedding table is then a single product, ``E_new = T @ E_old``; a row with no entries
(provenance ``fallback``) becomes the mean of all old rows.

This is the contract between every initialisation method (mean, weighted mean,
trans-tokenization, ...) and every consumer (`lingraft init`, re-applying a map to a
sibling checkpoint, the LEP conversion step). It is stored as ``token_map.safetensors``
next to the model it produced; never pickled.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from lingraft.errors import LingraftError

TOKEN_MAP_NAME = "token_map.safetensors"
FORMAT = "lingraft.token_map/1"
META_KEY = "lingraft"

# Codes are stored as uint8; the order is part of the file format (append only).
PROVENANCES: tuple[str, ...] = ("kept", "mean", "aligned", "smoothed", "fallback", "special")
_CODE = {name: i for i, name in enumerate(PROVENANCES)}
FALLBACK = _CODE["fallback"]


@dataclass(frozen=True)
class TokenMap:
    indptr: torch.Tensor      # int64 (new_vocab + 1,)
    indices: torch.Tensor     # int64 (nnz,) old-token ids
    weights: torch.Tensor     # float32 (nnz,)
    provenance: torch.Tensor  # uint8 (new_vocab,) codes into PROVENANCES
    old_vocab: int

    def __post_init__(self) -> None:
        n = self.provenance.numel()
        if self.indptr.numel() != n + 1 or int(self.indptr[0]) != 0 or int(self.indptr[-1]) != self.indices.numel():
            raise LingraftError("token map: indptr does not match indices/provenance sizes")
        if self.indices.numel() != self.weights.numel():
            raise LingraftError("token map: indices and weights differ in length")
        if bool((self.indptr[1:] < self.indptr[:-1]).any()):
            raise LingraftError("token map: indptr is not non-decreasing")
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.old_vocab):
            raise LingraftError(f"token map: an old-token index is outside [0, {self.old_vocab})")
        if not bool(torch.isfinite(self.weights).all()):
            raise LingraftError("token map: non-finite weight")
        if n and int(self.provenance.max()) >= len(PROVENANCES):
            raise LingraftError("token map: unknown provenance code")
        empty = self.indptr[1:] == self.indptr[:-1]
        if not torch.equal(empty, self.provenance == FALLBACK):
            raise LingraftError("token map: a row is empty iff its provenance is 'fallback'")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[int, float]], provenance: Sequence[str], old_vocab: int,
                  normalize: bool = True) -> "TokenMap":
        """Build from one {old_id: weight} dict per new token.

        A row whose dict is empty (or all zeros) is stored as ``fallback`` whatever its label,
        so "no source found" never silently becomes a zero embedding.

        With `normalize`, every row is scaled to sum to 1 (a convex combination of old rows),
        which is what all current methods mean by their weights.
        """
        if len(rows) != len(provenance):
            raise LingraftError(f"token map: {len(rows)} rows but {len(provenance)} provenance labels")
        unknown = sorted(set(provenance) - set(PROVENANCES))
        if unknown:
            raise LingraftError(f"token map: unknown provenance {unknown[0]!r}; expected one of {list(PROVENANCES)}")
        indptr, indices, weights = [0], [], []
        codes = []
        for i, (row, prov) in enumerate(zip(rows, provenance)):
            items = sorted((int(k), float(v)) for k, v in row.items() if v != 0.0)
            if any(v < 0 or not math.isfinite(v) for _, v in items):
                raise LingraftError(f"token map: row {i} has a negative or non-finite weight")
            total = sum(v for _, v in items)
            if normalize and items:
                items = [(k, v / total) for k, v in items]
            indices.extend(k for k, _ in items)
            weights.extend(v for _, v in items)
            indptr.append(len(indices))
            codes.append(_CODE["fallback"] if not items else _CODE[prov])
            if prov == "fallback" and items:
                raise LingraftError(f"token map: row {i} is labelled 'fallback' but has sources")
        return cls(indptr=torch.tensor(indptr, dtype=torch.int64),
                   indices=torch.tensor(indices, dtype=torch.int64),
                   weights=torch.tensor(weights, dtype=torch.float32),
                   provenance=torch.tensor(codes, dtype=torch.uint8),
                   old_vocab=int(old_vocab))

    # -- queries -------------------------------------------------------------------------
    @property
    def new_vocab(self) -> int:
        return self.provenance.numel()

    def row(self, new_id: int) -> dict[int, float]:
        lo, hi = int(self.indptr[new_id]), int(self.indptr[new_id + 1])
        return dict(zip(self.indices[lo:hi].tolist(), self.weights[lo:hi].tolist()))

    def provenance_of(self, new_id: int) -> str:
        return PROVENANCES[int(self.provenance[new_id])]

    def provenance_counts(self) -> dict[str, int]:
        counts = Counter(self.provenance.tolist())
        return {name: counts.get(code, 0) for name, code in _CODE.items()}

    # -- the one operation ---------------------------------------------------------------
    def apply(self, old: torch.Tensor) -> torch.Tensor:
        """``T @ old`` with empty rows set to the mean of all old rows; returns old's dtype.

        Accumulates in float64 for float64 input and float32 otherwise, so bf16/fp16 tables
        are rounded once, at the end.
        """
        if old.dim() != 2 or old.shape[0] != self.old_vocab:
            raise LingraftError(f"token map: expected an ({self.old_vocab}, d) table, got {tuple(old.shape)}")
        acc = torch.float64 if old.dtype == torch.float64 else torch.float32
        source = old.to(acc)
        # embedding_bag with per-sample weights is exactly a CSR-times-dense product, without
        # materialising the (nnz, d) gathered rows; empty bags come back as zeros.
        new = torch.nn.functional.embedding_bag(self.indices, source, self.indptr[:-1], mode="sum",
                                                per_sample_weights=self.weights.to(acc))
        fallback = self.provenance == FALLBACK
        if bool(fallback.any()):
            new[fallback] = source.mean(dim=0)
        return new.to(old.dtype)

    # -- storage -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from lingraft.atomic import atomic_path
        path = Path(path)
        # One metadata key: safetensors writes its metadata map in hash order, which changes from
        # run to run, and identical maps must give identical bytes (resume checks compare hashes).
        info = {"format": FORMAT, "old_vocab": self.old_vocab, "provenances": list(PROVENANCES)}
        meta = {META_KEY: json.dumps(info, sort_keys=True)}
        tensors = {"indptr": self.indptr.contiguous(), "indices": self.indices.contiguous(),
                   "weights": self.weights.contiguous(), "provenance": self.provenance.contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TokenMap":
        from safetensors import SafetensorError, safe_open
        path = Path(path)
        if path.is_dir():
            path = path / TOKEN_MAP_NAME
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
                if meta.get("format") != FORMAT:
                    raise LingraftError(f"{path}: not a lingraft token map (format {meta.get('format')!r})")
                stored = meta["provenances"]
                if stored != list(PROVENANCES[: len(stored)]):
                    raise LingraftError(f"{path}: provenance codes {stored} differ from this version's")
                tensors = {k: fh.get_tensor(k) for k in ("indptr", "indices", "weights", "provenance")}
        except FileNotFoundError:
            raise LingraftError(f"{path}: token map not found") from None
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            raise LingraftError(f"{path}: corrupt token map ({exc})") from None
        return cls(old_vocab=int(meta["old_vocab"]), **tensors)

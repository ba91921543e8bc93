"""Document-masked attention for packed samples.

A packed sample holds several documents; `position_ids` restart at 0 at each document
start. Attention must not cross those boundaries, and each kernel takes the boundaries
in its own form:

- flash_attention_2: the per-document position ids themselves (HF turns them into
  variable-length `cu_seqlens`);
- flex_attention: a `BlockMask` whose mask_mod compares document ids, so fully masked
  blocks are skipped;
- sdpa: an explicit block-diagonal causal boolean mask of shape (batch, 1, seq, seq).

With masking off, position ids run 0..seq-1 across the whole sample and the mask is the
plain causal one (the classic "concatenate and chunk" packing, for comparison).
"""
from __future__ import annotations

from typing import Any

import torch


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) ids that change wherever a new document starts (position id 0)."""
    return torch.cumsum(position_ids == 0, dim=-1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) bool: query i may attend key j iff j <= i and same document."""
    docs = document_ids(position_ids)
    seq = position_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    same_doc = docs.unsqueeze(-1) == docs.unsqueeze(-2)
    return (same_doc & causal).unsqueeze(1)


def flex_document_mask(position_ids: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask
    docs = document_ids(position_ids)
    batch, seq = docs.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (docs[b, q_idx] == docs[b, kv_idx])

    return create_block_mask(mask_mod, batch, None, seq, seq, device=position_ids.device)


def attention_inputs(position_ids: torch.Tensor, implementation: str, doc_mask: bool) -> dict[str, Any]:
    """Keyword arguments for an HF causal LM forward: `position_ids` and `attention_mask`."""
    if not doc_mask:
        batch, seq = position_ids.shape
        contiguous = torch.arange(seq, device=position_ids.device).expand(batch, seq)
        return {"position_ids": contiguous, "attention_mask": None}
    if implementation == "flash_attention_2":
        return {"position_ids": position_ids, "attention_mask": None}
    if implementation == "flex_attention":
        return {"position_ids": position_ids, "attention_mask": flex_document_mask(position_ids)}
    if implementation == "sdpa":
        return {"position_ids": position_ids, "attention_mask": block_causal_mask(position_ids)}
    raise ValueError(f"attention implementation {implementation!r} has no document mask")

"""Vocabulary tables split into frozen old rows and trainable new rows.

Training only the new rows of a table cannot be done with a gradient hook under ZeRO or
FSDP: the hook sees a flattened, partitioned gradient whose rows it cannot identify. So
the table itself is split. Old rows become a buffer (no gradient, no optimizer state, no
weight decay, bit-identical by construction); new rows are the only `nn.Parameter`. Every
backend then shards and optimises exactly what trains. `merge_split_tables` turns the
pair back into plain HF weights for export.

Index sets are arbitrary (new tokens need not be appended at the end): the embedding
looks each id up through precomputed id -> (is_new, local index) tables, the head
computes old and new logits and puts them back into vocabulary order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lingraft.errors import LingraftError


class VocabSplit(nn.Module):
    """Index bookkeeping shared by a split embedding and its head (non-persistent buffers)."""

    def __init__(self, new_ids: torch.Tensor, vocab_size: int) -> None:
        super().__init__()
        new_ids = torch.unique(new_ids.to(torch.int64))  # sorted, deduplicated
        if new_ids.numel() == 0:
            raise LingraftError("new_rows: no new token ids to train")
        if int(new_ids[0]) < 0 or int(new_ids[-1]) >= vocab_size:
            raise LingraftError(f"new_rows: token id {int(new_ids[-1])} is outside the vocabulary [0, {vocab_size})")
        is_new = torch.zeros(vocab_size, dtype=torch.bool)
        is_new[new_ids] = True
        old_ids = torch.nonzero(~is_new).flatten()
        local = torch.empty(vocab_size, dtype=torch.int64)
        local[old_ids] = torch.arange(old_ids.numel())
        local[new_ids] = torch.arange(new_ids.numel())
        # Position of each vocabulary id in cat([old_logits, new_logits]).
        concat_pos = torch.where(is_new, local + old_ids.numel(), local)
        self.vocab_size = vocab_size
        # New tokens appended after all old ones: the concatenation already is vocabulary order.
        self.is_suffix = bool(torch.equal(concat_pos, torch.arange(vocab_size)))
        self.register_buffer("is_new", is_new, persistent=False)
        self.register_buffer("local", local, persistent=False)
        self.register_buffer("concat_pos", concat_pos, persistent=False)
        self.register_buffer("old_ids", old_ids, persistent=False)
        self.register_buffer("new_ids", new_ids, persistent=False)


class SplitVocabEmbedding(nn.Module):
    """`nn.Embedding` replacement: rows `split.new_ids` train, all others are a frozen buffer."""

    def __init__(self, weight: torch.Tensor, split: VocabSplit) -> None:
        super().__init__()
        if weight.shape[0] != split.vocab_size:
            raise LingraftError(f"new_rows: table has {weight.shape[0]} rows, split expects {split.vocab_size}")
        self.split = split
        weight = weight.detach()
        # Not persistent: the old rows never change, so checkpoints leave them out and every
        # run (and export) takes them from the base model.
        self.register_buffer("frozen", weight[split.old_ids].clone(), persistent=False)
        self.new = nn.Parameter(weight[split.new_ids].clone())
        self.embedding_dim = weight.shape[1]
        self.num_embeddings = split.vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = self.split.is_new[input_ids].unsqueeze(-1)
        local = self.split.local[input_ids]
        # Each lookup clamps the ids that belong to the other table; `where` discards them,
        # and their (zero) gradient contributions.
        old = F.embedding(local.clamp(max=self.frozen.shape[0] - 1), self.frozen)
        new = F.embedding(local.clamp(max=self.new.shape[0] - 1), self.new)
        # FSDP2's mixed precision casts Parameters, never buffers: under bf16 the new rows
        # arrive in bf16 while the frozen rows stay fp32. The output follows the new rows.
        return torch.where(is_new, new, old.to(new.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The full table in vocabulary order (a fresh tensor; for inspection and export)."""
        return merge_rows(self.frozen, self.new.detach(), self.split)


class SplitVocabHead(nn.Module):
    """Bias-free LM head over a split table; logits come back in vocabulary order."""

    def __init__(self, frozen: torch.Tensor, new: nn.Parameter, split: VocabSplit) -> None:
        super().__init__()
        self.split = split
        # Tied models pass the embedding's own buffer and Parameter: one trainable tensor.
        self.register_buffer("frozen", frozen, persistent=False)
        self.new = new
        self.in_features = frozen.shape[1]
        self.out_features = split.vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The frozen buffer is not cast by FSDP2's mixed precision (see SplitVocabEmbedding.forward).
        frozen = self.frozen if self.frozen.dtype == hidden.dtype else self.frozen.to(hidden.dtype)
        new = self.new if self.new.dtype == hidden.dtype else self.new.to(hidden.dtype)
        logits = torch.cat([F.linear(hidden, frozen), F.linear(hidden, new)], dim=-1)
        return logits if self.split.is_suffix else logits.index_select(-1, self.split.concat_pos)

    @property
    def weight(self) -> torch.Tensor:
        return merge_rows(self.frozen, self.new.detach(), self.split)


def merge_rows(frozen: torch.Tensor, new: torch.Tensor, split: VocabSplit) -> torch.Tensor:
    """Reassemble a (vocab, d) table from its old and new rows."""
    table = torch.empty((split.vocab_size, frozen.shape[1]), dtype=frozen.dtype, device=frozen.device)
    table[split.old_ids] = frozen
    table[split.new_ids] = new.to(frozen.dtype)
    return table


def split_model_tables(model: nn.Module, new_ids: torch.Tensor) -> VocabSplit:
    """Replace the input embedding and LM head of an HF causal LM by split tables, in place."""
    embed = model.get_input_embeddings()
    if not isinstance(embed, nn.Embedding):
        raise LingraftError(f"new_rows: input embedding is {type(embed).__name__}, expected nn.Embedding")
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    split = VocabSplit(new_ids, embed.num_embeddings).to(embed.weight.device)
    split_embed = SplitVocabEmbedding(embed.weight, split)
    model.set_input_embeddings(split_embed)
    if head is not None:
        if getattr(head, "bias", None) is not None:
            raise LingraftError("new_rows: an LM head with a bias is not supported")
        if head.weight.shape[0] != split.vocab_size:
            raise LingraftError(f"new_rows: LM head has {head.weight.shape[0]} rows, embedding {split.vocab_size}")
        if tied:
            new_head = SplitVocabHead(split_embed.frozen, split_embed.new, split)
        else:
            head_weight = head.weight.detach()
            new_head = SplitVocabHead(head_weight[split.old_ids].clone(),
                                      nn.Parameter(head_weight[split.new_ids].clone()), split)
        model.set_output_embeddings(new_head)
    return split

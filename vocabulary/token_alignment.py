"""Where two tokenisations of the same text agree: the positions at which both have just
finished a token, so an old-vocabulary model and a new-vocabulary model have read exactly the
same text and should predict the same continuation.

Pure functions on id sequences and per-id byte lengths; no tokenizer calls. A position is
identified by how many UTF-8 bytes of the text have been read, so SentencePiece ``▁``
pieces, byte-level ``Ġ`` pieces and byte-fallback pieces all line up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from lingraft.vocabulary.token_matching import Vocabulary, describe_vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def token_bytes(tok: "PreTrainedTokenizerFast") -> list[bytes]:
    """The running text each id stands for, as bytes; special tokens stand for none (they are markup)."""
    return vocabulary_bytes(describe_vocabulary(tok))


def vocabulary_bytes(vocab: Vocabulary) -> list[bytes]:
    """`token_bytes` of an already described vocabulary."""
    out = [b""] * vocab.size
    for i, piece in vocab.piece_bytes.items():
        out[i] = piece
    for i, content in vocab.added.items():
        out[i] = b"" if i in vocab.special else content.encode("utf-8")
    return out


def byte_lengths(vocab: Vocabulary) -> np.ndarray:
    """Bytes of running text each id stands for; special tokens stand for none (they are markup)."""
    return np.array([len(piece) for piece in vocabulary_bytes(vocab)], dtype=np.int64)


def aligned_positions(old_ids: np.ndarray, new_ids: np.ndarray, old_lengths: np.ndarray,
                      new_lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j): old token i and new token j end at the same byte of the text.

    At such a pair the old model's state after token i and the new model's state after token j
    have consumed the same text. Zero-length tokens (a start token) end where the text begins,
    so a leading start token in both sequences is a pair too. When several tokens end at the same
    byte (zero-length markup), the last of each is used: that is the state that predicts the text.
    """
    return aligned_ends(np.cumsum(old_lengths[old_ids]), np.cumsum(new_lengths[new_ids]))


def aligned_ends(old_ends: np.ndarray, new_ends: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`aligned_positions` from each token's end offset (non-decreasing byte counts), for callers
    whose offsets are not plain sums of per-id lengths (a tokenizer's dummy prefix taken off)."""
    old_last = _last_index_per_end(old_ends)
    new_last = _last_index_per_end(new_ends)
    common = np.intersect1d(old_last[0], new_last[0], assume_unique=True)
    old_pos = old_last[1][np.searchsorted(old_last[0], common)]
    new_pos = new_last[1][np.searchsorted(new_last[0], common)]
    return torch.from_numpy(old_pos.astype(np.int64)), torch.from_numpy(new_pos.astype(np.int64))


def _last_index_per_end(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct end offsets, the last token index that ends at each)."""
    # ends is non-decreasing; the last of a run of equal values is where the next value differs
    last = np.flatnonzero(np.append(ends[1:] != ends[:-1], True))
    return ends[last], last

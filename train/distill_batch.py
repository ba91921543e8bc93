"""What the teacher reads for a micro-batch, and where its tokens line up with the model's.

The packed samples hold the model's (new) token ids only. For each document of each sample
the text is rebuilt from the ids' bytes, tokenised by the teacher's (old) tokenizer, and the
two tokenisations are aligned by bytes (vocabulary/token_alignment.py): a pair (j, i) is a
model position j and a teacher position i after which both have read exactly the same
bytes of the document, so both predict the same continuation.

- A sample may start in the middle of a character (packing cuts anywhere): the teacher's
  text starts at the first model token that begins a whole character, and the model
  positions before it are not paired. A sample cut mid-character at the end loses that
  character likewise.
- Nothing is prepended for the teacher (no start token): pairs exist only where both
  sequences have a token. A tokenizer that adds a dummy prefix (SentencePiece's leading
  ``▁``) is detected from the bytes it returns and its offsets are shifted back; any other
  rewrite of the text (a normaliser) ends the pairing at the first differing byte.
- A model position whose label is masked (prompt, padding) is not paired: the distillation
  judges the same predictions as the cross-entropy.
- Documents are re-tokenised one by one and laid back to back in the teacher's row, position
  ids restarting at each, so document masking applies to the teacher as to the model. With
  doc_mask off the teacher reads the documents without the end-of-document token between
  them (the model reads it): contexts past a document boundary then differ by that token.

Runs on the CPU in the data stream (one batched tokenizer call per micro-batch, numpy for
the rest); the result travels with the batch as three tensors (keys below).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from lingraft.data_prep.dataset import IGNORE_INDEX as IGNORE
from lingraft.vocabulary.token_alignment import aligned_ends

TEACHER_IDS = "teacher_input_ids"          # (batch, teacher_len) the teacher's tokens, documents back to back
TEACHER_POSITIONS = "teacher_position_ids"  # (batch, teacher_len) restarting at 0 at every document
PAIRS = "distill_pairs"                    # (batch, n, 2) [model position, teacher position], -1 = padding

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class ByteTable:
    """Every id's bytes of running text in one buffer: id k is buf[start[k] : start[k] + length[k]]."""
    buf: np.ndarray      # uint8
    start: np.ndarray    # int64 (vocab,)
    length: np.ndarray   # int64 (vocab,)

    @classmethod
    def of(cls, pieces: Sequence[bytes]) -> "ByteTable":
        length = np.array([len(p) for p in pieces], dtype=np.int64)
        start = np.cumsum(length) - length
        return cls(np.frombuffer(b"".join(pieces), dtype=np.uint8), start, length)

    def text(self, ids: np.ndarray) -> np.ndarray:
        """The bytes of `ids` read one after another (uint8)."""
        lengths = self.length[ids]
        offsets = np.cumsum(lengths) - lengths
        index = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths) + np.repeat(self.start[ids], lengths)
        return self.buf[index]


def complete_prefix(text: np.ndarray) -> int:
    """Length of the longest prefix of UTF-8 bytes that does not end inside a character."""
    for back in range(1, min(4, len(text)) + 1):
        byte = int(text[-back])
        if byte & 0xC0 != 0x80:                      # the last character's lead byte
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4 if byte >> 3 == 30 else 1
            return len(text) if back >= need else len(text) - back
    return len(text)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass(frozen=True)
class Segment:
    """One document of one sample as the teacher will read it."""
    row: int
    positions: np.ndarray  # sample indices of the model tokens the text covers (those with bytes)
    ends: np.ndarray       # byte offset after each of them, from the text's start
    text: np.ndarray       # the bytes the teacher reads (uint8)


def document_segments(row: int, ids: np.ndarray, position_ids: np.ndarray, table: ByteTable) -> list[Segment]:
    bounds = sorted({0, *np.flatnonzero(position_ids == 0).tolist(), len(ids)})
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lengths = table.length[ids[a:b]]
        data = table.text(ids[a:b])
        ends = np.cumsum(lengths)
        # Tokens with bytes only: a trailing end-of-document token reads nothing, and the state
        # that predicts it is the last text token's, which is the one paired.
        real = np.flatnonzero(lengths > 0)
        starts = ends[real] - lengths[real]
        whole = real[data[starts] & 0xC0 != 0x80]      # tokens that start a whole character
        if not whole.size:
            continue
        skip = int(ends[whole[0]] - lengths[whole[0]])
        real = real[real >= whole[0]]
        text = data[skip:]
        out.append(Segment(row, real + a, ends[real] - skip, text[:complete_prefix(text)]))
    return out


def segment_pairs(segment: Segment, teacher_ids: np.ndarray, teacher: ByteTable) -> tuple[np.ndarray, np.ndarray]:
    """(model positions in the sample, teacher indices in the segment's tokens) that end at one byte."""
    read = teacher.text(teacher_ids)
    prefix = max(len(read) - len(segment.text), 0)          # a dummy prefix the tokenizer added
    agreed = common_prefix(read[prefix:], segment.text)      # bytes both sequences read alike
    if not teacher_ids.size or not agreed:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    teacher_pos, model_index = (t.numpy() for t in aligned_ends(np.cumsum(teacher.length[teacher_ids]) - prefix,
                                                                 segment.ends))
    end = segment.ends[model_index]
    keep = (end > 0) & (end <= agreed)
    return segment.positions[model_index[keep]], teacher_pos[keep]


class TeacherInputs:
    """BatchStream's `extend`: the teacher's tensors and the aligned pairs of a CPU micro-batch."""

    def __init__(self, model: ByteTable, teacher: ByteTable, encode: Encode) -> None:
        self.model, self.teacher, self.encode = model, teacher, encode

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, positions, labels = (batch[k].numpy() for k in ("input_ids", "position_ids", "labels"))
        segments = [s for row in range(len(ids)) for s in document_segments(row, ids[row], positions[row], self.model)]
        encoded = self.encode([s.text.tobytes().decode("utf-8", errors="replace") for s in segments])
        rows_ids: list[list[np.ndarray]] = [[] for _ in ids]
        rows_pairs: list[list[np.ndarray]] = [[] for _ in ids]
        filled = [0] * len(ids)
        for segment, teacher_ids in zip(segments, encoded):
            teacher_ids = np.asarray(teacher_ids, dtype=np.int64)
            model_pos, teacher_pos = segment_pairs(segment, teacher_ids, self.teacher)
            target = labels[segment.row, model_pos] != IGNORE
            rows_pairs[segment.row].append(np.stack([model_pos[target], teacher_pos[target] + filled[segment.row]], 1))
            rows_ids[segment.row].append(teacher_ids)
            filled[segment.row] += len(teacher_ids)
        return self._padded(rows_ids, rows_pairs)

    @staticmethod
    def _padded(rows_ids: list[list[np.ndarray]], rows_pairs: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
        width = max([1] + [sum(len(t) for t in row) for row in rows_ids])
        n = max([0] + [sum(len(p) for p in row) for row in rows_pairs])
        teacher_ids = torch.zeros(len(rows_ids), width, dtype=torch.int64)
        # Padding continues the last document's positions: causal attention keeps it out of every real token.
        positions = torch.arange(width).repeat(len(rows_ids), 1)
        pairs = torch.full((len(rows_ids), n, 2), -1, dtype=torch.int64)
        for row, (chunks, row_pairs) in enumerate(zip(rows_ids, rows_pairs)):
            at = 0
            for chunk in chunks:
                teacher_ids[row, at:at + len(chunk)] = torch.from_numpy(chunk)
                positions[row, at:at + len(chunk)] = torch.arange(len(chunk))
                at += len(chunk)
            positions[row, at:] = torch.arange(width - at) + (int(positions[row, at - 1]) + 1 if at else 0)
            if row_pairs:
                joined = torch.from_numpy(np.concatenate(row_pairs))
                pairs[row, :len(joined)] = joined
        return {TEACHER_IDS: teacher_ids, TEACHER_POSITIONS: positions, PAIRS: pairs}


def aligned_pair_count(batch: dict[str, torch.Tensor]) -> float:
    """Pairs of a micro-batch (0 without distillation): the KL's share of the step's denominator."""
    return float((batch[PAIRS][..., 0] >= 0).sum()) if PAIRS in batch else 0.0


def tokenizer_encode(tok) -> Encode:
    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    return encode

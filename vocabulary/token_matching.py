"""Match a new tokenizer's tokens to an old tokenizer's, and build mean-style TokenMaps.

Tokens are compared by the *bytes of text they stand for*, not by their vocabulary strings,
so conventions cancel out: SentencePiece's ``▁`` and byte-level BPE's ``Ġ`` both become a
space, a SentencePiece byte-fallback piece ``<0xD0>`` and the byte-level character ``Ð``
both become the byte 0xD0. Added and special tokens are matched by their literal content.

A new token absent from the old vocabulary is re-segmented by the old tokenizer's subword
model (applied directly to the token's bytes, so no normaliser, pre-tokeniser or dummy
prefix can change the text), and its row is a (weighted) mean of those pieces' rows.

Where the new tokenizer was made from the old one (`lingraft tokenizer extend|optimize`), its
``vocab_map.json`` already says which old id each token had; given as `old_ids`, it decides
every row it covers, and matching by bytes only fills the rest. Matching by bytes alone keeps
the two kinds of piece apart where a byte has both: a byte-fallback piece ``<0x61>`` takes
the old ``<0x61>`` row, not the row of the ordinary piece ``a``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from lingraft.errors import LingraftError
from lingraft.vocabulary.loading import byte_to_unicode, tokenizer_kind, unicode_to_byte
from lingraft.vocabulary.token_map import TokenMap

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SUPPORTED = ("byte_level_bpe", "byte_level_unigram", "sentencepiece_bpe", "bpe", "unigram")
ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class Vocabulary:
    """What each id of a tokenizer stands for: text bytes for subwords, content for added tokens."""
    size: int                          # len(tokenizer): model vocabulary + added tokens
    byte_level: bool
    piece_bytes: dict[int, bytes]      # subword ids -> the bytes they stand for in running text
    added: dict[int, str]              # added/special ids -> literal content
    special: frozenset[int]            # the added ids that are special tokens
    byte_fallback: frozenset[int]      # SentencePiece <0xNN> pieces


def describe_vocabulary(tok: "PreTrainedTokenizerFast") -> Vocabulary:
    kind = tokenizer_kind(tok)
    if kind not in _SUPPORTED:
        raise LingraftError(f"tokenizer kind {kind!r} is not supported for embedding transfer "
                            f"(supported: {', '.join(_SUPPORTED)})")
    byte_level = kind.startswith("byte_level")
    added = {i: t.content for i, t in tok.added_tokens_decoder.items()}
    special = frozenset(i for i, t in tok.added_tokens_decoder.items() if t.special)
    to_byte = unicode_to_byte()
    pieces, byte_fallback = {}, set()
    for piece, i in tok.backend_tokenizer.get_vocab(with_added_tokens=False).items():
        if i in added:
            continue
        if byte_level and all(c in to_byte for c in piece):
            pieces[i] = bytes(to_byte[c] for c in piece)
        elif (m := _BYTE_PIECE.match(piece)) and not byte_level:
            pieces[i] = bytes([int(m.group(1), 16)])
            byte_fallback.add(i)
        else:
            pieces[i] = piece.replace("▁", " ").encode("utf-8")
    return Vocabulary(size=len(tok), byte_level=byte_level, piece_bytes=pieces, added=added, special=special,
                      byte_fallback=frozenset(byte_fallback))


def bytes_index(vocab: Vocabulary) -> dict[bytes, int]:
    """bytes -> old id; an ordinary piece wins over a byte-fallback piece for the same byte."""
    index: dict[bytes, int] = {}
    for i in sorted(vocab.piece_bytes, key=lambda i: (i in vocab.byte_fallback, i)):
        index.setdefault(vocab.piece_bytes[i], i)
    return index


def kept_old_id(text: bytes, byte_fallback: bool, old_bytes: dict[bytes, int],
                old_fallback: dict[bytes, int]) -> int | None:
    """The old id standing for exactly `text`, if any. A new byte-fallback piece matches the old
    byte-fallback piece of its byte first (an old byte-level BPE has none, and its byte symbol
    stands for that byte exactly)."""
    if byte_fallback and text in old_fallback:
        return old_fallback[text]
    return old_bytes.get(text)


class OldSegmenter:
    """Split any byte string into old-vocabulary ids with the old tokenizer's subword model."""

    def __init__(self, tok: "PreTrainedTokenizerFast", vocab: Vocabulary) -> None:
        self._model = tok.backend_tokenizer.model
        self._vocab = vocab
        self._unk = tok.unk_token_id
        self._byte_ids = {b[0]: i for b, i in bytes_index(vocab).items() if len(b) == 1}

    def __call__(self, data: bytes) -> list[int]:
        if not data:
            return []
        if self._vocab.byte_level:
            table = byte_to_unicode()
            return self._tokenize("".join(table[b] for b in data))
        ids: list[int] = []
        for chunk, valid in _utf8_runs(data):
            if valid:
                ids += self._tokenize(chunk.decode("utf-8").replace(" ", "▁"))
            else:  # bytes that are not whole characters: only byte pieces can stand for them
                ids += [self._byte_ids[b] for b in chunk if b in self._byte_ids]
        return ids

    def _tokenize(self, text: str) -> list[int]:
        return [t.id for t in self._model.tokenize(text) if t.id != self._unk]


def _utf8_runs(data: bytes) -> list[tuple[bytes, bool]]:
    """Split `data` into maximal runs of valid UTF-8 and of stray bytes."""
    runs: list[tuple[bytes, bool]] = []
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            runs.append((data[pos:], True))
            break
        except UnicodeDecodeError as exc:
            if exc.start:
                runs.append((data[pos:pos + exc.start], True))
            runs.append((data[pos + exc.start:pos + exc.end], False))
            pos += exc.end
    return runs


def piece_weights(pieces: Sequence[bytes], method: str, position_decay: float, whitespace_weight: float) -> list[float]:
    """Weights of a new token's old pieces: equal for `mean`; for `weighted-mean` decaying with
    position (the first piece carries most of a word's identity) and low for pure whitespace."""
    if method == "mean":
        return [1.0] * len(pieces)
    return [position_decay ** k * (whitespace_weight if p.strip() == b"" else 1.0) for k, p in enumerate(pieces)]


def build_mean_map(old: "PreTrainedTokenizerFast", new: "PreTrainedTokenizerFast", method: str = "mean",
                   position_decay: float = 0.8, whitespace_weight: float = 0.1,
                   old_ids: Sequence[int] | None = None) -> TokenMap:
    """The TokenMap of `mean` / `weighted-mean` initialisation from `old` to `new` (any two
    supported tokenizers). Rows over the old tokenizer's ids, i.e. old_vocab = len(old).
    `old_ids`: the new tokenizer's vocab map (`vocabulary.vocab_map`), authoritative where >= 0."""
    if method not in ("mean", "weighted-mean"):
        raise LingraftError(f"unknown mean method {method!r}")
    old_vocab, new_vocab = describe_vocabulary(old), describe_vocabulary(new)
    old_bytes = bytes_index(old_vocab)
    old_fallback = {old_vocab.piece_bytes[i]: i for i in old_vocab.byte_fallback}
    old_added = {content: i for i, content in old_vocab.added.items()}
    segment = OldSegmenter(old, old_vocab)
    rows: list[dict[int, float]] = []
    provenance: list[str] = []
    for new_id in range(new_vocab.size):
        mapped = old_ids[new_id] if old_ids is not None and new_id < len(old_ids) else -1
        if mapped >= 0:
            rows.append({mapped: 1.0})
            provenance.append("special" if mapped in old_vocab.added else "kept")
            continue
        row, label = _special_row(new_id, new_vocab, old_added)
        if row is None:
            text = new_vocab.piece_bytes.get(new_id)
            if text is None:      # an added, non-special token unknown to `old`: treat as text
                text = new_vocab.added[new_id].encode("utf-8")
            kept = kept_old_id(text, new_id in new_vocab.byte_fallback, old_bytes, old_fallback)
            if kept is not None:
                row, label = {kept: 1.0}, "kept"
            else:
                ids = segment(text)
                weights = piece_weights([old_vocab.piece_bytes[i] for i in ids], method, position_decay,
                                        whitespace_weight)
                row, label = {}, "mean"
                for i, w in zip(ids, weights):
                    row[i] = row.get(i, 0.0) + w
        rows.append(row)
        provenance.append(label)
    return TokenMap.from_rows(rows, provenance, old_vocab=old_vocab.size)


def _special_row(new_id: int, new_vocab: Vocabulary, old_added: dict[str, int]) -> tuple[dict[int, float] | None, str]:
    """Special/added tokens are copied by literal content; a special one without a match falls back."""
    content = new_vocab.added.get(new_id)
    if content is None:
        return None, ""
    if content in old_added:
        return {old_added[content]: 1.0}, "special"
    if new_id in new_vocab.special:
        return {}, "fallback"
    return None, ""


def adopt_special_tokens(new: "PreTrainedTokenizerFast", old: "PreTrainedTokenizerFast") -> list[str]:
    """Give `new` every added token of `old` it lacks (same content, same special flag), the
    old special-token roles and the old chat template, so prompts written for the old model
    still tokenize to the same special tokens. Returns the contents that were added."""
    from tokenizers import AddedToken
    present = set(new.get_vocab())
    missing = [t for _, t in sorted(old.added_tokens_decoder.items()) if t.content not in present]
    for token in missing:
        new.add_tokens([AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                   rstrip=token.rstrip, normalized=token.normalized, special=token.special)],
                       special_tokens=token.special)
    for role in ROLES:
        value = getattr(old, role, None)
        if value is not None:
            setattr(new, role, str(value))
    if old.chat_template:
        new.chat_template = old.chat_template
    return [t.content for t in missing]

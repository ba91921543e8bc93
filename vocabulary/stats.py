"""Compression statistics of tokenizers on the same held-out text.

Definitions (all ratios are corpus totals divided by corpus totals, not means of ratios):
  chars_per_token     Unicode code points / tokens.
  bytes_per_token     UTF-8 bytes / tokens.
  tokens_per_word     tokens / words. A *word* is a maximal run of Python `re` word characters
                      (``\\w+``: Unicode letters, digits and underscore), so punctuation is not a
                      word but its tokens still count. On the UD Russian sentences this gives
                      61,683 words, the count used by the reference figures in MANIFEST.md.
  unk_rate            share of tokens that are the model's unknown token.
  byte_fallback_rate  share of tokens that do not stand for whole characters: the <0xNN>
                      pieces of a byte-fallback model (Llama-2, Mistral), or, for a byte-level
                      model (GPT-2, Llama-3), tokens whose bytes are not valid UTF-8 on their
                      own because they hold part of a character. Other models: 0.
Text is encoded without special tokens, and special-token strings inside the text are
encoded as ordinary text, so a stray "<s>" in the data cannot skew the figures.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from lingraft.atomic import write_json
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.vocabulary.config import TokenizerStatsConfig
from lingraft.vocabulary.corpus import CorpusText
from lingraft.vocabulary.loading import (backend_json, load_tokenizer, tokenizer_fingerprint, tokenizer_kind,
                                unicode_to_byte)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)

WORD = re.compile(r"\w+")
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_GENERIC_NAMES = {"tokenizer.json", "tokenizer.json.xz", "tokenizer.model", "encoder.json", "vocab.bpe"}


@dataclass(frozen=True)
class TextCounts:
    """Tokenizer-independent sizes of the held-out text."""
    texts: int
    chars: int
    bytes: int
    words: int


def count_text(texts: Sequence[str]) -> TextCounts:
    return TextCounts(texts=len(texts), chars=sum(map(len, texts)),
                      bytes=sum(len(t.encode("utf-8")) for t in texts),
                      words=sum(len(WORD.findall(t)) for t in texts))


@dataclass(frozen=True)
class TokenizerStats:
    vocab_size: int
    kind: str
    tokens: int
    chars_per_token: float
    bytes_per_token: float
    tokens_per_word: float
    unk_rate: float
    byte_fallback_rate: float
    unk_tokens: int
    byte_fallback_tokens: int
    fingerprint: str


def partial_token_mask(tok: "PreTrainedTokenizerFast", data: dict | None = None) -> np.ndarray:
    """mask[id] is True for tokens that stand for part of a character (see module docstring)."""
    data = backend_json(data or tok)
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    added = {t["content"] for t in data.get("added_tokens", [])}
    if data["model"].get("byte_fallback"):
        for token, idx in vocab.items():
            mask[idx] = bool(BYTE_PIECE.match(token)) and token not in added
    elif tokenizer_kind(data).startswith("byte_level"):
        decoder = unicode_to_byte()
        for token, idx in vocab.items():
            if token in added or any(ch not in decoder for ch in token):
                continue
            try:
                bytes(decoder[ch] for ch in token).decode("utf-8")
            except UnicodeDecodeError:
                mask[idx] = True
    return mask


def unknown_token_id(tok: "PreTrainedTokenizerFast", data: dict | None = None) -> int | None:
    """The id the *model* emits for unknown input (not tokenizer_config's unk_token name)."""
    model = backend_json(data or tok)["model"]
    if model.get("type") == "Unigram":
        return model.get("unk_id")
    unk = model.get("unk_token")
    return tok.backend_tokenizer.token_to_id(unk) if unk else None


def tokenizer_stats(tok: "PreTrainedTokenizerFast", texts: Sequence[str], counts: TextCounts,
                    batch_size: int = 256) -> TokenizerStats:
    """Encode `texts` (batched, without special tokens) and compute the statistics."""
    backend = tok.backend_tokenizer
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    data = backend_json(tok)
    partial = partial_token_mask(tok, data)
    unk_id = unknown_token_id(tok, data)
    n_tokens = n_unk = n_partial = 0
    try:
        for start in range(0, len(texts), batch_size):
            for enc in backend.encode_batch(list(texts[start:start + batch_size]), add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=np.int64)
                n_tokens += ids.size
                if unk_id is not None:
                    n_unk += int((ids == unk_id).sum())
                n_partial += int(partial[ids[ids < partial.size]].sum())
    finally:
        backend.encode_special_tokens = previous
    if n_tokens == 0:
        raise LingraftError("the data encodes to zero tokens; nothing to measure")
    return TokenizerStats(
        vocab_size=len(tok), kind=tokenizer_kind(data), tokens=n_tokens,
        chars_per_token=counts.chars / n_tokens, bytes_per_token=counts.bytes / n_tokens,
        tokens_per_word=n_tokens / counts.words if counts.words else float("nan"),
        unk_rate=n_unk / n_tokens, byte_fallback_rate=n_partial / n_tokens,
        unk_tokens=n_unk, byte_fallback_tokens=n_partial, fingerprint=tokenizer_fingerprint(data))


def parse_named_spec(spec: str) -> tuple[str, str]:
    """`name=path` -> (name, path); a bare path is named after its file, or its folder when the
    file name is generic (tokenizer.json, tokenizer.model...)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if name and "/" not in name:
            return name, path
    p = Path(spec.split(",")[0])
    if p.name in _GENERIC_NAMES or p.is_dir():
        return (p.parent.name if p.name in _GENERIC_NAMES else p.name), spec
    name = p.name
    for suffix in (".xz", ".json", ".model"):
        name = name.removesuffix(suffix)
    return name, spec


def format_table(stats: dict[str, TokenizerStats]) -> str:
    header = ("tokenizer", "vocab", "chars/tok", "tok/word", "bytes/tok", "unk %", "byte-fb %")
    rows = [(name, f"{s.vocab_size:,}", f"{s.chars_per_token:.3f}", f"{s.tokens_per_word:.3f}",
             f"{s.bytes_per_token:.3f}", f"{100 * s.unk_rate:.3f}", f"{100 * s.byte_fallback_rate:.3f}")
            for name, s in stats.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def compare_tokenizers(specs: Iterable[str], texts: Sequence[str], batch_size: int = 256,
                       trust_remote_code: bool = False) -> tuple[TextCounts, dict[str, TokenizerStats]]:
    counts = count_text(texts)
    named = [parse_named_spec(s) for s in specs]
    names = [n for n, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LingraftError(f"tokenizer names clash ({', '.join(duplicates)}); name them with name=path")
    results = {}
    for name, spec in progress(named, desc="tokenizers", unit="tok"):
        results[name] = tokenizer_stats(load_tokenizer(spec, trust_remote_code), texts, counts, batch_size)
    return counts, results


def run_stats(cfg: TokenizerStatsConfig) -> dict:
    """`lingraft tokenizer stats`: print a table; write {name: {...}} JSON to cfg.out if given."""
    corpus = CorpusText(cfg.data, cfg.text_field, cfg.max_chars, desc="held-out text")
    texts = list(corpus)
    if not texts:
        raise LingraftError(f"{', '.join(cfg.data)}: no text found (field {cfg.text_field!r})")
    counts, results = compare_tokenizers(cfg.tokenizer, texts, cfg.batch_size, cfg.trust_remote_code)
    print(f"{counts.texts:,} texts, {counts.chars:,} chars, {counts.words:,} words")
    print(format_table(results))
    data = {"texts": counts.texts, "chars": counts.chars, "words": counts.words, "data_sha256": corpus.sha256}
    report = {name: {**asdict(s), **data} for name, s in results.items()}
    if cfg.out:
        write_json(cfg.out, report)
    return report

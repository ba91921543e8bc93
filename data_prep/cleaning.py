"""Per-document text cleaning: Unicode normalisation, a script filter and length filters.

These are pure functions of one text (plus a per-code-point cache); what to do with a
failing document (count it, keep an example) is the stage's business.
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Sequence

import numpy as np

from lingraft.data_prep.clean_config import CleanConfig, NormalForm

_N_CODEPOINTS = 0x110000


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array (one C-level copy, no Python loop).

    `surrogatepass` keeps lone surrogates (which JSON escapes can produce) as their own code
    points instead of failing."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CodepointTable:
    """A yes/no property of code points, decided once per distinct code point and cached in a
    1.1 MB lookup table, so classifying a document is one vectorised lookup.

    The predicate runs in Python, but only on code points not seen before: after the first
    few documents of a language almost every lookup is a hit.
    """

    def __init__(self, predicate: Callable[[str], bool]):
        self._predicate = predicate
        self._table = np.full(_N_CODEPOINTS, -1, dtype=np.int8)  # -1: not classified yet

    def mask(self, cps: np.ndarray) -> np.ndarray:
        """Boolean array: does each code point have the property?"""
        status = self._table[cps]
        unknown = status < 0
        if unknown.any():
            for cp in np.unique(cps[unknown]).tolist():
                self._table[cp] = bool(self._predicate(chr(cp)))
            status = self._table[cps]
        return status.astype(bool)

    @property
    def classified(self) -> int:
        """How many distinct code points were looked at so far."""
        return int(np.count_nonzero(self._table >= 0))


def normalize_text(text: str, form: NormalForm) -> str:
    """Unicode normalisation; `is_normalized` is a fast check that skips the copy when the
    text is already in `form` (true of most text)."""
    if form == "none" or unicodedata.is_normalized(form, text):
        return text
    return unicodedata.normalize(form, text)


class ScriptFilter:
    """Measures how much of a text lies outside a set of allowed Unicode scripts/categories.

    `allowed` holds `regex` property names: scripts (Cyrillic, Latin, Common, Inherited...)
    or general categories (L, N, P, S, Zs, M...). Whitespace is always allowed.
    """

    def __init__(self, allowed: Sequence[str]):
        import regex

        if not allowed:
            raise ValueError("ScriptFilter needs at least one allowed script or category")
        pattern = regex.compile("[" + "".join(rf"\p{{{name}}}" for name in allowed) + r"\s]")
        self.allowed = list(allowed)
        self.table = CodepointTable(lambda ch: pattern.match(ch) is not None)

    def disallowed_share(self, text: str) -> float:
        cps = codepoints(text)
        if cps.size == 0:
            return 0.0
        return 1.0 - np.count_nonzero(self.table.mask(cps)) / cps.size


def length_problem(text: str, cfg: CleanConfig) -> str | None:
    """The drop reason for a text outside the configured length bounds, or None."""
    n = len(text)
    if n < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and n > cfg.max_chars:
        return "too_long"
    # maxsplit stops the split after min_words words: a long text is not split whole.
    if cfg.min_words and len(text.split(None, cfg.min_words)) < cfg.min_words:
        return "too_few_words"
    return None

"""Which new tokens a base vocabulary may take on, and which pieces a tokenizer trained like it may learn.

Two kinds of rule, both read from data rather than from model-family defaults:

* *Base rules*, inferred from the base vocabulary: a base with no piece that joins a digit to
  anything else splits digits (Mistral/Llama-2 `split_digits`); a base with no piece holding
  a space after other text splits before spaces (SentencePiece `split_by_whitespace`);
  a byte-fallback base spells a character it has no piece for in ``<0xNN>`` pieces, so such a
  character never joins a longer piece. Training `like: base` and `extend` both obey them.
* *The new-language rule*: a new token must hold a letter of the new language's scripts
  (Cyrillic for Russian). New merges then fire only on text that holds such a letter, so
  English prose, numbers and code encode exactly as the base encodes them, with no protected
  corpus. Tokens made only of whitespace, digits or punctuation (``ĊĠĠĠ``, ``00``, ``»,``)
  are refused under this rule: the base already spells them, and taking them over would
  re-encode every Python file. A base token that an Optimized shrink dropped may always
  come back: that restores the base's own encoding.

A token's scripts are read from the Unicode names of its letters (``CYRILLIC SMALL LETTER A``
-> ``CYRILLIC``). A byte-level token may end inside a character; its lead byte still fixes
the script when every character it can start belongs to one script (0xD0: U+0400-U+043F).
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping

from lingraft.errors import LingraftError
from lingraft.vocabulary.loading import unicode_to_byte

SPACE = "▁"
# A script holding at least this share of the letters of the new tokens is a new-language script
# (RusLit: Cyrillic about 97%, Latin from French quotations about 3%).
SCRIPT_SHARE = 0.10
REFUSALS = ("no_new_language_letter", "joins_a_digit", "whitespace_inside")


@dataclass(frozen=True)
class BaseRules:
    """What the base vocabulary shows about how it splits text."""
    splits_digits: bool            # no piece joins a digit to anything
    splits_before_space: bool      # no piece has a space after other text
    byte_level: bool
    chars: frozenset[str] | None   # single characters with a piece (byte-fallback bases), else None


def token_text(token: str, byte_level: bool) -> tuple[str, str]:
    """(complete text, partial character) a model token stands for. The partial character is
    the lowest character a trailing, unfinished UTF-8 sequence can start, or "" if none;
    continuation bytes a token starts with belong to a character before it and are dropped."""
    if not byte_level:
        return token.replace(SPACE, " "), ""
    table = unicode_to_byte()
    data = bytes(table[c] for c in token if c in table)
    pos = 0
    while pos < len(data) and 0x80 <= data[pos] < 0xC0:
        pos += 1
    text = data[pos:].decode("utf-8", errors="ignore")
    tail = _unfinished_tail(data[pos:])
    return text, _partial_char(tail)


def _unfinished_tail(data: bytes) -> bytes:
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead >= 0xC0:
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return data[-back:] if back < need else b""
        if lead < 0x80:
            return b""
    return b""


def _partial_char(tail: bytes) -> str:
    """The script-defining character of an unfinished sequence: its lowest and highest
    completions must be letters of one script, else ""."""
    if not tail:
        need = 0
    else:
        need = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    if not tail or need <= len(tail):
        return ""
    low = (tail + b"\x80" * (need - len(tail))).decode("utf-8", errors="ignore")
    high = (tail + b"\xbf" * (need - len(tail))).decode("utf-8", errors="ignore")
    if len(low) == 1 == len(high) and letter_script(low) is not None and letter_script(low) == letter_script(high):
        return low
    return ""


def letter_script(char: str) -> str | None:
    """The script of a letter (its Unicode name's first word), None for a non-letter."""
    if not unicodedata.category(char).startswith(("L", "M")):
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def token_scripts(token: str, byte_level: bool) -> set[str]:
    text, partial = token_text(token, byte_level)
    return {s for s in map(letter_script, text + partial) if s is not None}


def infer_rules(tok_json: Mapping[str, Any], byte_level: bool) -> BaseRules:
    """The base rules of a tokenizer, from its model vocabulary."""
    model = tok_json.get("model") or {}
    vocab = model.get("vocab") or {}
    pieces = [p for p, _ in vocab] if isinstance(vocab, list) else list(vocab)   # Unigram: [piece, score]
    added = {a["content"] for a in tok_json.get("added_tokens", [])}
    texts = [token_text(p, byte_level)[0] for p in pieces if p not in added and not _is_byte_piece(p)]
    joins_digit = any(len(t) > 1 and any(c.isdecimal() for c in t) for t in texts)
    space_inside = any(_whitespace_inside(t) for t in texts)
    # Model symbols, not text: the trainer sees normalised text, where a space is already "▁".
    singles = frozenset(p for p in pieces if len(p) == 1 and p not in added)
    chars = singles if model.get("byte_fallback") and not byte_level else None
    return BaseRules(splits_digits=not joins_digit, splits_before_space=not space_inside, byte_level=byte_level,
                     chars=chars)


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _whitespace_inside(text: str) -> bool:
    """A space after other text (SentencePiece's `split_by_whitespace` forbids it; "\r" and
    "\n" are ordinary characters there, and Mistral has pieces such as ``);\r``)."""
    return " " in text.lstrip(" ")


def base_rule_refusal(text: str, rules: BaseRules) -> str | None:
    """Which base rule a token's text breaks, if any."""
    if rules.splits_digits and len(text) > 1 and any(c.isdecimal() for c in text):
        return "joins_a_digit"
    if rules.splits_before_space and _whitespace_inside(text):
        return "whitespace_inside"
    return None


def infer_new_scripts(tokens: Iterable[str], byte_level: bool) -> set[str]:
    """Scripts holding at least SCRIPT_SHARE of the letters of `tokens` (the new tokens)."""
    counts: Counter[str] = Counter()
    for token in tokens:
        text, partial = token_text(token, byte_level)
        counts.update(s for s in map(letter_script, text + partial) if s is not None)
    total = sum(counts.values())
    return {s for s, n in counts.items() if n >= SCRIPT_SHARE * total}


class NewTokenRule:
    """Decides, for each candidate new token, whether a base may take it on (None) or why not."""

    def __init__(self, rules: BaseRules, scripts: Collection[str], base_tokens: Collection[str] = ()) -> None:
        if not scripts:
            raise LingraftError("new_scripts: no script for the new language (give --new-scripts, e.g. Cyrillic)")
        self.rules, self.scripts = rules, {s.upper() for s in scripts}
        self._base = base_tokens

    def refusal(self, token: str) -> str | None:
        if token in self._base:
            return None
        text, partial = token_text(token, self.rules.byte_level)
        broken = base_rule_refusal(text, self.rules)
        if broken:
            return broken
        if not any(letter_script(c) in self.scripts for c in text + partial):
            return "no_new_language_letter"
        return None


def new_token_rule(base_json: Mapping[str, Any], byte_level: bool, candidates: Iterable[str],
                   scripts: Collection[str] = (), base_tokens: Collection[str] = ()) -> NewTokenRule:
    """The rule for extending `base_json`; `scripts` empty: inferred from the `candidates`."""
    candidates = list(candidates)
    chosen = {s.upper() for s in scripts} or infer_new_scripts(candidates, byte_level)
    if scripts and not any(token_scripts(t, byte_level) & chosen for t in candidates):
        raise LingraftError(f"new_scripts: no new token holds a letter of {', '.join(sorted(chosen))} "
                            f"(script names as in Unicode character names, e.g. Cyrillic, Latin, Greek)")
    return NewTokenRule(infer_rules(base_json, byte_level), chosen, base_tokens)


def isolating_regex(chars: Collection[str]) -> str:
    """An Oniguruma class matching one character outside `chars` (ranges of \\x{...} escapes)."""
    points = sorted(ord(c) for c in chars)
    ranges: list[tuple[int, int]] = []
    for p in points:
        if ranges and p == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[^{body}]"


def training_splits(rules: BaseRules) -> list[dict[str, Any]]:
    """Pre-tokenizer steps that make a trainer obey the base rules (training only: the trained
    merges never join what these split, so the base's own pipeline encodes with them unchanged)."""
    steps: list[dict[str, Any]] = []
    if rules.splits_digits:
        steps.append({"type": "Digits", "individual_digits": True})
    if rules.chars is not None:
        steps.append({"type": "Split", "pattern": {"Regex": isolating_regex(rules.chars)},
                      "behavior": "Isolated", "invert": False})
    return steps

"""Where a long document may be cut for tokenization without changing a single token.

A novel tokenized whole keeps one tokenizer thread busy long after the others have run
out of work. Cut into pieces at paragraph starts, it spreads evenly, but only if
``encode(A + B) == encode(A) + encode(B)`` at every cut. That holds by construction for
one tokenizer family, and the packer cuts nothing for any other:

* no normalizer, and a pre-tokenizer that is exactly ``Split(<regex>, Isolated)`` followed by
  ``ByteLevel(use_regex=False)``, with the regex one of `SEAM_SAFE_PATTERNS` (tiktoken's
  cl100k/Llama-3 and Qwen2 patterns); a BPE model without dropout; no added token that
  contains a line break or strips whitespace to its left;
* the cut lies right after a ``\\n`` and right before a character that is not whitespace.

Why: the character before the cut is ``\\n``, and no alternative of those patterns can
match a line break followed by a non-space character, so in the whole document a
pre-token ends exactly at the cut. Matching after it starts fresh (the patterns look
ahead, never behind), so B's pre-tokens are the whole document's. Before the cut, the only
alternative whose outcome could see past it is ``\\s+(?!\\S)``, and it is never reached
across the cut, because ``\\s*[\\r\\n]+`` comes first and matches any whitespace run that
ends in the ``\\n``; so A's pre-tokens are the whole document's too. Byte-level mapping and
BPE work inside one pre-token, and added tokens cannot span the ``\\n``. Every cut is also
a paragraph start (`pack.paragraph_token_starts`), so paragraph boundaries survive it.
"""
from __future__ import annotations

import json
from typing import Any

# Alternatives in this order; only the digit run differs between the two.
_CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SEAM_SAFE_PATTERNS = frozenset({_CL100K, _QWEN2})


def seam_facts(backend: Any) -> dict[str, Any]:
    """The parts of a `tokenizers.Tokenizer`'s JSON that `cuts_at_paragraphs` reads, taken from
    its components: serialising the whole tokenizer (vocabulary and merges) takes a large one
    most of a second, and the packer needs this answer before it tokenizes anything."""
    def part(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())
    return {"normalizer": part(backend.normalizer), "pre_tokenizer": part(backend.pre_tokenizer),
            "model": {"type": type(backend.model).__name__, "dropout": getattr(backend.model, "dropout", None)},
            "added_tokens": [{"content": t.content, "lstrip": t.lstrip}
                             for t in backend.get_added_tokens_decoder().values()]}


def cuts_at_paragraphs(tokenizer: dict[str, Any]) -> bool:
    """Whether documents may be cut at paragraph starts for this tokenizer (its JSON as a dict,
    or the `seam_facts` of it)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if tokenizer.get("normalizer") is not None or not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    if (split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert")
            or (split.get("pattern") or {}).get("Regex") not in SEAM_SAFE_PATTERNS):
        return False
    if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
        return False
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return False
    return not any("\n" in t.get("content", "") or "\r" in t.get("content", "") or t.get("lstrip")
                   for t in tokenizer.get("added_tokens") or [])


def cut_points(text: str, piece_chars: int) -> list[int]:
    """Offsets where `text` is cut into pieces of at least `piece_chars` characters (the last
    one may be shorter), each cut right after a ``\\n`` and before a non-space character."""
    cuts: list[int] = []
    start, end = 0, len(text)
    while start + 2 * piece_chars <= end:   # never leave a last piece much shorter than the others
        newline = text.find("\n", start + piece_chars)
        while newline != -1 and newline + 1 < end and text[newline + 1].isspace():
            newline = text.find("\n", newline + 1)
        if newline == -1 or newline + 1 >= end:
            break
        start = newline + 1
        cuts.append(start)
    return cuts


def pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]

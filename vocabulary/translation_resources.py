"""Translation resources for trans-tokenization: readers, validation and word splitting.

Two kinds of resource count as evidence of which old-language word translates which
new-language word:

  * ``parallel``: sentence-aligned text, one JSON object per line with one field per
    language (``{"en": "...", "ru": "..."}``). Its words are aligned by `vocabulary.alignment`.
  * ``dictionary``: headword -> glosses, one JSON object per line whose new-language field
    is a list of glosses (``{"en": "cat", "ru": ["кошка", "кот"]}``). Each (headword, gloss)
    is taken as already aligned; only the first `max_glosses` glosses are read, as dictionaries
    list the common senses first.

Field names say which side is the old model's language and which the new tokenizer's; no
language is assumed. Format problems raise one-line `LingraftError`s naming file and line;
records that are well-formed but unusable (an empty side, a headword without glosses) are
counted in a `DropLog`, never dropped silently.
"""
from __future__ import annotations

import json
import lzma
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lingraft.data_prep.readers import open_binary
from lingraft.data_prep.records import DropLog
from lingraft.errors import LingraftError
# The resource's options are part of `lingraft init`'s config (re-exported here for readers of resources).
from lingraft.vocabulary.init_config import TranslationResourceConfig, parse_resource_spec  # noqa: F401

# A word is a run of letters/digits, possibly joined by inner hyphens or apostrophes
# ("well-known", "don't"); any other non-space character is a one-character token.
_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")

# gettext catalogs: printf conversions (%s, %1$d, %.*s, %lu; binutils' %pB, %P), python %(name)s and {0}/{name}
# placeholders, escaped control characters, and mnemonic accelerators (_File, &File).
_PLACEHOLDER = re.compile(
    r"%(?:\(\w+\))?(?:\d+\$)?[-+#0']*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|L|q|j|z|t)?"
    r"(?:p[A-Za-z]|[A-Za-z%])"
    r"|\{\w*\}|\\[ntr]")
_ACCELERATOR = re.compile(r"(?<!\w)[_&](?=\w)")
_SPACES = re.compile(r"\s+")


@dataclass
class ResourcePairs:
    """What a resource holds: (old-language text, new-language text) pairs, in file order."""
    config: TranslationResourceConfig
    kind: Literal["parallel", "dictionary"]
    old_texts: list[str]
    new_texts: list[str]
    records: int           # JSON records in the file (before sampling)
    drops: DropLog

    def __len__(self) -> int:
        return len(self.old_texts)


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of `text`, in order (the unit that word alignment works on)."""
    return _WORD.findall(text)


def is_word(token: str) -> bool:
    return token[:1].isalnum() or token[:1] == "_"


def strip_gettext(text: str) -> str:
    """A UI message without the parts that are code, not language."""
    return _SPACES.sub(" ", _ACCELERATOR.sub("", _PLACEHOLDER.sub(" ", text))).strip()


def read_resource(cfg: TranslationResourceConfig, seed: int = 0) -> ResourcePairs:
    """Read and validate one resource; raise LingraftError naming file and line on a format error."""
    path = Path(cfg.path)
    if not path.is_file():
        raise LingraftError(f"{path}: translation resource not found")
    kind = None if cfg.kind == "auto" else cfg.kind
    records: list[tuple[int, str, str | list[str]]] = []   # (line number, old value, new value)
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                old, new = _parse_line(raw, path, lineno, cfg)
                kind = kind or ("dictionary" if isinstance(new, list) else "parallel")
                _check_types(old, new, kind, path, lineno, cfg)
                records.append((lineno, old, new))
    except (OSError, EOFError, lzma.LZMAError) as exc:  # unreadable, truncated or corrupt compressed files
        raise LingraftError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not records:
        raise LingraftError(f"{path}: no records (an empty translation resource)")
    total = len(records)
    if cfg.max_pairs is not None and cfg.max_pairs < total:
        # A seeded sample rather than the first N: resource files are often sorted (by headword,
        # by package), and the head of a sorted file is a biased slice of the vocabulary.
        records = sorted(random.Random(seed).sample(records, cfg.max_pairs))
    pairs = ResourcePairs(config=cfg, kind=kind, old_texts=[], new_texts=[], records=total,
                          drops=DropLog())
    for lineno, old, new in records:
        _add_record(pairs, f"{path}:{lineno}", old, new)
    if not pairs.old_texts:
        raise LingraftError(f"{path}: none of its {total} records has text on both sides "
                            f"({', '.join(f'{k}: {n}' for k, n in sorted(pairs.drops.counts.items()))})")
    return pairs


def _parse_line(raw: bytes, path: Path, lineno: int, cfg: TranslationResourceConfig):
    where = f"{path}:{lineno}"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LingraftError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LingraftError(f"{where}: not JSONL ({exc.msg}); each line must be a JSON object") from None
    if not isinstance(record, dict):
        raise LingraftError(f"{where}: not JSONL; each line must be a JSON object, got {type(record).__name__}")
    for name in (cfg.old_field, cfg.new_field):
        if name not in record:
            raise LingraftError(f"{where}: missing field {name!r} (the record has: {', '.join(map(str, record))})")
    return record[cfg.old_field], record[cfg.new_field]


def _check_types(old, new, kind: str, path: Path, lineno: int, cfg: TranslationResourceConfig) -> None:
    where = f"{path}:{lineno}"
    if not isinstance(old, str):
        raise LingraftError(f"{where}: field {cfg.old_field!r} must be a string, got {type(old).__name__}")
    if kind == "parallel" and not isinstance(new, str):
        raise LingraftError(f"{where}: field {cfg.new_field!r} must be a string in a parallel resource, "
                            f"got {type(new).__name__} (set kind=dictionary for gloss lists)")
    if kind == "dictionary" and not (isinstance(new, str) or
                                     (isinstance(new, list) and all(isinstance(g, str) for g in new))):
        raise LingraftError(f"{where}: field {cfg.new_field!r} must be a gloss or a list of glosses "
                            f"in a dictionary, got {type(new).__name__}")


def _add_record(pairs: ResourcePairs, where: str, old: str, new: str | list[str]) -> None:
    clean = strip_gettext if pairs.config.markup == "gettext" else str.strip
    old = clean(old)
    if pairs.kind == "parallel":
        new = clean(new)
        if not old or not new:
            pairs.drops.drop("empty_side", where, f"{old!r} / {new!r}")
            return
        pairs.old_texts.append(old)
        pairs.new_texts.append(new)
        return
    glosses = [clean(g) for g in ([new] if isinstance(new, str) else new)]
    glosses = [g for g in glosses if g][: pairs.config.max_glosses]
    if not old or not glosses:
        pairs.drops.drop("empty_headword" if not old else "no_gloss", where, old)
        return
    for gloss in glosses:
        pairs.old_texts.append(old)
        pairs.new_texts.append(gloss)

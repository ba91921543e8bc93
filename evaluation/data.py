"""Reading evaluation text and records, with clear errors for an empty file or a wrong field."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from lingraft.data_prep.readers import iter_texts, open_binary
from lingraft.data_prep.records import DropLog
from lingraft.errors import LingraftError


def _fields_hint(path: str) -> str:
    """The fields of the file's first JSON record, to name in an error."""
    try:
        with open_binary(path) as fh:
            for raw in fh:
                if raw.strip():
                    record = json.loads(raw)
                    return f" (records have: {', '.join(record)})" if isinstance(record, dict) else ""
    except (OSError, ValueError, LingraftError):
        pass
    return ""


def read_texts(path: str, text_field: str = "text", max_docs: int | None = None,
               max_chars: int | None = None) -> list[str]:
    """The non-empty texts of `path`, cut to `max_docs` documents and `max_chars` characters."""
    if not Path(path).exists():
        raise LingraftError(f"{path}: no such file")
    drops = DropLog()
    texts, chars = [], 0
    for text in islice(iter_texts(path, text_field, drops=drops), max_docs):
        if max_chars is not None:
            text = text[:max_chars - chars]
        texts.append(text)
        chars += len(text)
        if max_chars is not None and chars >= max_chars:
            break
    if not texts:
        if drops.counts.get("missing_field"):
            raise LingraftError(f"{path}: no record has the field {text_field!r}{_fields_hint(path)}")
        raise LingraftError(f"{path}: no text to evaluate (empty file?)")
    return texts


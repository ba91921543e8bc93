"""Reading the text that tokenizers are trained on or measured with.

One iterator for training and statistics: it streams documents from any number of files,
honours a character budget, shows progress in characters, and hashes exactly the text it
yielded, so a manifest can tell two corpora apart even when they come from the same files.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

from lingraft.data_prep.readers import iter_texts
from lingraft.data_prep.records import DropLog
from lingraft.log import get_logger, progress

log = get_logger(__name__)


@dataclass
class CorpusText:
    """Iterate once over the texts of `paths`; afterwards `chars`, `docs` and `sha256` describe them."""
    paths: list[str]
    text_field: str = "text"
    max_chars: int | None = None
    desc: str = "reading corpus"
    chars: int = 0
    docs: int = 0
    drops: DropLog = field(default_factory=DropLog)
    _hash: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)

    def __iter__(self) -> Iterator[str]:
        bar = progress(total=self.max_chars, unit="char", unit_scale=True, desc=self.desc)
        try:
            for path in self.paths:
                for text in iter_texts(path, self.text_field, drops=self.drops):
                    if self.max_chars is not None and self.chars + len(text) > self.max_chars:
                        text = text[: self.max_chars - self.chars]  # the budget is exact, even mid-document
                    if not text:
                        return
                    self._hash.update(text.encode("utf-8"))
                    self._hash.update(b"\0")
                    self.chars += len(text)
                    self.docs += 1
                    bar.update(len(text))
                    yield text
                    if self.max_chars is not None and self.chars >= self.max_chars:
                        return
        finally:
            bar.close()
            if self.drops.total:
                log.warning("skipped %d unreadable records: %s", self.drops.total, dict(self.drops.counts))

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def summary(self) -> dict:
        return {"chars": self.chars, "docs": self.docs, "sha256": self.sha256, "dropped": self.drops.to_json()}

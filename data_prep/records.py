"""Documents as they flow through data prep, and the ledger of what was dropped and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lingraft.errors import DataError
from lingraft.log import get_logger

EXAMPLE_CHARS = 160
MISSING = object()    # what `field_value` returns for a path the record does not have
log = get_logger(__name__)


def field_value(record: Any, path: str) -> Any:
    """`record` at a dotted path (`messages.1.content`; list steps are indices, negative ones
    count from the end); `MISSING` when any step is absent. A key that itself holds a dot is
    found whole first."""
    if isinstance(record, dict) and path in record:
        return record[path]
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


@dataclass(frozen=True)
class Document:
    text: str
    source: str   # the source's name in the mix
    where: str    # "path:line" (or "dataset[idx]") for messages and examples


@dataclass
class DropLog:
    """Counts every dropped record by reason and keeps a few examples of each.

    In strict mode the first drop raises `DataError` instead, naming where it happened.
    Nothing is ever dropped without passing through here. A whole file dropped (truncated or
    corrupt) is always listed by name, however many there are.
    """

    strict: bool = False
    max_examples: int = 3
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    files: dict[str, list[dict[str, str]]] = field(default_factory=dict)   # reason -> [{"file", "error"}]

    def drop(self, reason: str, where: str, sample: Any = "") -> None:
        if self.strict:
            raise DataError(f"{where}: {reason}")
        self.skip(reason, where, sample)

    def skip(self, reason: str, where: str, sample: Any = "") -> None:
        """Counts a record left out on purpose (a configured filter): never an error, even in strict mode."""
        self.counts[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            text = sample if isinstance(sample, str) else repr(sample)
            bucket.append({"where": where, "sample": text[:EXAMPLE_CHARS]})

    def drop_file(self, reason: str, path: str, detail: str) -> None:
        """A file that could not be read to its end: its records read before the damage are kept."""
        if self.strict:
            raise DataError(f"{path}: {reason} ({detail})")
        log.warning("%s: %s (%s); its remaining records are dropped", path, reason, detail)
        self.counts[reason] += 1
        self.files.setdefault(reason, []).append({"file": path, "error": detail})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "DropLog") -> None:
        self.counts.update(other.counts)
        for reason, items in other.examples.items():
            bucket = self.examples.setdefault(reason, [])
            bucket.extend(items[: self.max_examples - len(bucket)])
        for reason, files in other.files.items():
            self.files.setdefault(reason, []).extend(files)

    def to_json(self) -> dict[str, Any]:
        report = {reason: {"count": n, "examples": self.examples.get(reason, [])}
                  for reason, n in sorted(self.counts.items())}
        for reason, files in self.files.items():
            report[reason]["files"] = files
        return report

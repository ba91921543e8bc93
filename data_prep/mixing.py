"""Deterministic weighted interleaving of document streams, by characters.

At each step the next document comes from the source that is furthest behind its target:
the one with the smallest emitted_chars / weight (ties go to the source listed first). After
any prefix of the output, each source's character share is therefore within one document of
its weight share, and the same inputs always give the same order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

from lingraft.data_prep.records import Document


@dataclass
class SourceTally:
    name: str
    weight: float
    docs: int = 0
    chars: int = 0
    exhausted: bool = False


class CharMixer:
    """Iterate to get the mixed documents; afterwards `tallies` and `stop_reason` say what happened.

    on_exhausted="stop" ends the output as soon as the source due next has nothing left, so the
    declared mix holds; "continue" drops that source and goes on with the rest. `max_chars`
    ends the output once it holds that many characters.
    """

    def __init__(self, streams: Sequence[tuple[str, float, Iterator[Document]]],
                 on_exhausted: Literal["stop", "continue"] = "stop", max_chars: int | None = None):
        if not streams:
            raise ValueError("CharMixer needs at least one stream")
        if on_exhausted not in ("stop", "continue"):
            raise ValueError(f"on_exhausted must be 'stop' or 'continue', got {on_exhausted!r}")
        self.tallies = [SourceTally(name, weight) for name, weight, _ in streams]
        if any(t.weight <= 0 for t in self.tallies):
            raise ValueError("every weight must be > 0")
        self._streams = [iter(stream) for _, _, stream in streams]
        self.on_exhausted = on_exhausted
        self.max_chars = max_chars
        self.stop_reason = "not started"

    @property
    def total_chars(self) -> int:
        return sum(t.chars for t in self.tallies)

    def __iter__(self) -> Iterator[Document]:
        active = list(range(len(self._streams)))
        self.stop_reason = "running"
        while active:
            if self.max_chars is not None and self.total_chars >= self.max_chars:
                self.stop_reason = f"reached max_chars={self.max_chars}"
                return
            i = min(active, key=lambda j: (self.tallies[j].chars / self.tallies[j].weight, j))
            tally = self.tallies[i]
            doc = next(self._streams[i], None)
            if doc is None:
                tally.exhausted = True
                if self.on_exhausted == "stop":
                    self.stop_reason = f"source '{tally.name}' ran out (on_exhausted=stop)"
                    return
                active.remove(i)
                continue
            tally.docs += 1
            tally.chars += len(doc.text)
            yield doc
        self.stop_reason = "every source ran out"

    def close(self) -> None:
        """Close the streams (a source left unfinished by on_exhausted=stop keeps its file open otherwise)."""
        for stream in self._streams:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def realised_mix(self) -> dict[str, dict[str, float]]:
        """{name: {docs, chars, share}}: share is of the output's characters."""
        total = self.total_chars
        return {t.name: {"docs": t.docs, "chars": t.chars, "share": t.chars / total if total else 0.0}
                for t in self.tallies}

"""Text an Extended vocabulary must encode exactly as its base does: code and numbers.

Used with `extend.reencoded_words` by the tests and `bench/vocab_variants.py`. Code is the
Python standard library's own source, read in place from the running interpreter; numbers are
generated (integers, decimals, dates, prices, large grouped and ungrouped values), so neither
needs a data file.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path


def python_sources(count: int = 150) -> list[str]:
    """The first `count` standard-library modules (sorted by name), as text."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:count]
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def number_lines(docs: int = 40, lines: int = 50) -> list[str]:
    """`docs` documents of `lines` number-heavy lines each."""
    out = []
    for d in range(docs):
        rows = []
        for i in range(d * lines, (d + 1) * lines):
            rows.append(f"{i:>6} {i * i} {i / 7:.4f} {1900 + i % 130}-{i % 12 + 1:02d}-{i % 28 + 1:02d} "
                        f"${i * 13.5:,.2f} {i * 1000003 % 99991} {i * 7919:,} -{i % 97}.{i % 10}% #{i:04d}")
        out.append("\n".join(rows))
    return out

"""Cluster host lists: expand Slurm nodelists and write DeepSpeed hostfiles.

`scontrol show hostnames` is the reference expander, but it is absent inside many
containers, so the expansion is done here: ``gpu[01-03,07],login1`` and multi-range
names such as ``rack[1-2]-n[01-02]`` are supported, zero padding is kept.

    python -m lingraft.hostfile --nodelist "$SLURM_JOB_NODELIST" --slots 8 --out hostfile
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from pathlib import Path

from lingraft.atomic import atomic_open
from lingraft.errors import LingraftError

_BRACKET = re.compile(r"\[([^\]]*)\]")


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LingraftError(f"nodelist {nodelist!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise LingraftError(f"nodelist {nodelist!r}: unbalanced '['")
    parts.append(nodelist[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range_set(spec: str, nodelist: str) -> list[str]:
    values = []
    for item in spec.split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise LingraftError(f"nodelist {nodelist!r}: bad range '{item}'")
            width = len(lo)
            values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
        elif item.isdigit():
            values.append(item)
        else:
            raise LingraftError(f"nodelist {nodelist!r}: bad range item '{item}'")
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm nodelist into host names, in order."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        pieces = _BRACKET.split(part)  # literal, range, literal, range, ..., literal
        literals, ranges = pieces[0::2], pieces[1::2]
        choices = [_expand_range_set(r, nodelist) for r in ranges]
        for combo in itertools.product(*choices):
            name = literals[0] + "".join(v + lit for v, lit in zip(combo, literals[1:]))
            hosts.append(name)
    if not hosts:
        raise LingraftError(f"nodelist {nodelist!r}: no hosts")
    return hosts


def hostfile_text(hosts: list[str], slots: int) -> str:
    if slots < 1:
        raise LingraftError(f"slots must be >= 1, got {slots}")
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodelist", default=os.environ.get("SLURM_JOB_NODELIST"),
                        help="Slurm nodelist (default: $SLURM_JOB_NODELIST)")
    parser.add_argument("--slots", type=int, default=int(os.environ.get("SLURM_GPUS_ON_NODE", "8")),
                        help="GPUs per node (default: $SLURM_GPUS_ON_NODE or 8)")
    parser.add_argument("--out", required=True, help="hostfile to write")
    args = parser.parse_args(argv)
    try:
        if not args.nodelist:
            raise LingraftError("no nodelist: pass --nodelist or run inside a Slurm allocation")
        hosts = expand_nodelist(args.nodelist)
        with atomic_open(Path(args.out)) as fh:
            fh.write(hostfile_text(hosts, args.slots))
    except LingraftError as exc:
        print(f"hostfile: error: {exc}", file=sys.stderr)
        return 1
    print(f"hostfile: {len(hosts)} hosts x {args.slots} slots -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

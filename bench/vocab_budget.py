"""Benchmark: how many new tokens the Extended vocabulary should take (`tokenizer extend --add`).

Every new token is a pair of rows that init and training must learn from the training mix. A
budget that takes every token the new BPE offers halves tokens per word, but many of its rows
then occur too rarely in the mix to be learnt (copying fails at exactly those tokens:
`bench/copy_tokens.py --counts`). For each budget this extends the base with the new
tokenizer's first `add` tokens (rank order) and reports, side by side in one run:

* tokens per word on the held-out text, and as a ratio to the base's (issue 11: <= 0.55);
* the share of the held-out text's new-token positions whose token the training mix holds
  fewer than `--rare` times, and the share of the new tokens the mix holds that rarely.

Tokenization only (no model): seconds per budget. It reads the demo's data stages:

    .venv/bin/lingraft pipeline --config configs/demo.yaml --until tokenizer
    .venv/bin/python bench/vocab_budget.py --work runs/demo --add 4000,6000,8000,all

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")

from lingraft.data_prep.readers import iter_texts  # noqa: E402
from lingraft.demo_model import smollm2_path  # noqa: E402
from lingraft.vocabulary.extend import extend  # noqa: E402
from lingraft.vocabulary.loading import load_tokenizer  # noqa: E402
from lingraft.vocabulary.stats import count_text, tokenizer_stats  # noqa: E402

SHARED = Path(os.environ.get("LINGRAFT_SHARED", ROOT.parent / "shared" / "data"))


def token_counts(tok, texts: list[str], vocab_size: int) -> np.ndarray:
    """How often each id occurs in `texts` (encoded without special tokens)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(texts), 256):
        for enc in tok.backend_tokenizer.encode_batch(texts[start:start + 256], add_special_tokens=False):
            np.add.at(counts, np.asarray(enc.ids, dtype=np.int64), 1)
    return counts


def rare_shares(tok, first_new: int, mix_counts: np.ndarray, held_out: list[str], rare: int) -> dict[str, float]:
    """Of the held-out text's new-token positions, and of the new tokens, the shares the mix holds < `rare` times."""
    held_counts = token_counts(tok, held_out, mix_counts.size)
    new_mix, new_held = mix_counts[first_new:], held_counts[first_new:]
    return {"heldout_positions_rare": float(new_held[new_mix < rare].sum() / max(1, new_held.sum())),
            "new_tokens_rare": float((new_mix < rare).mean()) if new_mix.size else 0.0}


def parse_budgets(text: str) -> list[int | None]:
    return [None if part == "all" else int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "demo",
                        help="a demo work dir: its tokenizer/ and clean/ stages are read")
    parser.add_argument("--base", default=None, help="base tokenizer (default: the cached SmolLM2)")
    parser.add_argument("--add", type=parse_budgets, default=parse_budgets("4000,6000,8000,all"),
                        help="comma-separated new-token budgets; `all` takes every token the merge rule accepts")
    parser.add_argument("--held-out", default=str(SHARED / "ru_text" / "ud_russian_sentences.jsonl"))
    parser.add_argument("--protect", default=str(SHARED / "en_text" / "fineweb_en_sample.jsonl"))
    parser.add_argument("--rare", type=int, default=100, help="a token the mix holds fewer times is rare")
    args = parser.parse_args()
    for stage in ("tokenizer", "clean"):
        if not (args.work / stage).is_dir():
            raise SystemExit(f"{args.work / stage} is missing: run `lingraft pipeline --config configs/demo.yaml "
                             f"--until tokenizer` first")

    base = load_tokenizer(args.base or smollm2_path())
    new = load_tokenizer(args.work / "tokenizer")
    protect = list(iter_texts(args.protect))
    held_out = [t for t in iter_texts(args.held_out) if t.strip()]
    mix = list(iter_texts(str(args.work / "clean")))
    counts = count_text(held_out)
    base_tpw = tokenizer_stats(base, held_out, counts).tokens_per_word
    print(f"base: {len(base):,} tokens, {base_tpw:.3f} tokens per word on {Path(args.held_out).name}")
    print(f"{'add':>6} {'added':>6} {'tokens/word':>11} {'/ base':>7} {'held-out new positions rare':>28} "
          f"{'new tokens rare':>15} {'seconds':>7}")
    rows = []
    for budget in args.add:
        start = time.perf_counter()
        variant = extend(base, new, budget, protect)
        tpw = tokenizer_stats(variant.tokenizer, held_out, counts).tokens_per_word
        shares = rare_shares(variant.tokenizer, len(base), token_counts(variant.tokenizer, mix, len(variant.tokenizer)),
                             held_out, args.rare)
        row = {"add": budget or "all", "added": variant.counts["added"], "tokens_per_word": round(tpw, 4),
               "ratio_to_base": round(tpw / base_tpw, 4), **{k: round(v, 4) for k, v in shares.items()},
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"{row['add']:>6} {row['added']:>6} {tpw:>11.3f} {row['ratio_to_base']:>7.3f} "
              f"{row['heldout_positions_rare']:>28.3f} {row['new_tokens_rare']:>15.3f} {row['seconds']:>7.1f}")
    print(json.dumps({"base_tokens_per_word": round(base_tpw, 4), "rare_below": args.rare, "budgets": rows}))


if __name__ == "__main__":
    main()

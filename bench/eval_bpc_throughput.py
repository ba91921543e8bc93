"""Throughput of `lingraft eval bpc` on SmolLM2-135M-Instruct: characters scored per second.

    .venv/bin/python bench/eval_bpc_throughput.py --chars 15000 --dtypes float32,bfloat16

Scores the first --chars characters of RusLit (Russian) and FineWeb (English) with the same
code path as the CLI, and extrapolates the time for 1 MB (10^6 UTF-8 bytes) of each text.
Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))
TEXTS = {"ru": (SHARED / "ru_text" / "ruslit.jsonl.xz", "text"),
         "en": (SHARED / "en_text" / "fineweb_en_sample.jsonl", "text")}


def main() -> None:
    from lingraft.evaluation.data import read_texts
    from lingraft.evaluation.models import load_model
    from lingraft.evaluation.bpc import bits_per_character
    from lingraft.demo_model import smollm2_path
    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", type=int, default=15000)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    args = parser.parse_args()
    results = {}
    for dtype in args.dtypes.split(","):
        loaded = load_model(str(smollm2_path()), dtype=dtype, device=args.device)
        for lang, (path, field) in TEXTS.items():
            texts = read_texts(str(path), field, max_chars=args.chars)
            start = time.perf_counter()
            r = bits_per_character(loaded.model, loaded.tokenizer, texts, max_length=args.max_length,
                                   batch_tokens=args.batch_tokens)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results[f"{lang}/{dtype}"] = {
                "bits_per_char": round(r.bits_per_character, 4), "chars": r.characters, "bytes": r.utf8_bytes,
                "tokens": r.tokens, "seconds": round(seconds, 1), "chars_per_s": round(r.characters / seconds),
                "tokens_per_s": round(r.tokens / seconds), "minutes_per_MB": round(1e6 / r.utf8_bytes * seconds / 60, 1)}
            print(f"{lang}/{dtype}: {results[f'{lang}/{dtype}']}", file=sys.stderr, flush=True)
        del loaded
    print(json.dumps({"device": str(args.device), "threads": torch.get_num_threads(), "max_length": args.max_length,
                      "results": results}))


if __name__ == "__main__":
    main()

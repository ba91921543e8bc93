"""Benchmark: how well a tokenizer trained on RusLit compresses held-out Russian (UD sentences).

Trains a BPE (default 32k, both styles by default) on RusLit with `lingraft tokenizer train`'s
trainer, then measures it next to the shared reference tokenizers with `tokenizer stats`.
Target: <= 2.0 tokens per word on the UD Russian sentences (Mistral 2.85, Llama-3 2.32,
darulm-32k 1.84). Prints a table; the last line is JSON.

    .venv/bin/python bench/tokenizer_quality.py [--max-chars N] [--vocab-size 32000] [--styles sentencepiece,byte_level]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


from lingraft.data_prep.readers import iter_texts  # noqa: E402
from lingraft.vocabulary.corpus import CorpusText  # noqa: E402
from lingraft.vocabulary.loading import load_tokenizer  # noqa: E402
from lingraft.vocabulary.stats import count_text, format_table, tokenizer_stats  # noqa: E402
from lingraft.vocabulary.training import TrainParams, scratch_pipeline, train_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("LINGRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared" / "data"))
REFERENCES = {"mistral": "tokenizers/mistral/mistral7b_v0.1_tokenizer.model",
              "llama3": "tokenizers/llama3/tokenizer.json.xz",
              "darulm-32k": "tokenizers/ruadapt_darulm_32k_bpe"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=None, help="RusLit characters to train on (default: all)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--styles", default="sentencepiece,byte_level")
    ap.add_argument("--kind", default="bpe", choices=["bpe", "unigram"])
    args = ap.parse_args()

    held_out = list(iter_texts(str(SHARED / "ru_text" / "ud_russian_sentences.jsonl")))
    counts = count_text(held_out)
    results, train_info = {}, {}
    for style in args.styles.split(","):
        corpus = CorpusText([str(SHARED / "ru_text" / "ruslit.jsonl.xz")], max_chars=args.max_chars,
                            desc=f"RusLit ({style})")
        start = time.perf_counter()
        tok = train_tokenizer(corpus, scratch_pipeline(style, []), TrainParams(args.kind, args.vocab_size))
        seconds = time.perf_counter() - start
        name = f"ruslit-{args.kind}-{style}-{args.vocab_size // 1000}k"
        train_info[name] = {"train_chars": corpus.chars, "train_seconds": round(seconds, 1)}
        results[name] = tokenizer_stats(tok, held_out, counts)
    for name, rel in REFERENCES.items():
        results[name] = tokenizer_stats(load_tokenizer(SHARED / rel), held_out, counts)
    print(f"held-out: UD Russian, {counts.texts:,} sentences, {counts.words:,} words")
    print(format_table(results))
    summary = {name: {"tokens_per_word": round(s.tokens_per_word, 3), "chars_per_token": round(s.chars_per_token, 3),
                      **train_info.get(name, {})} for name, s in results.items()}
    print(json.dumps({"bench": "tokenizer_quality", "date": time.strftime("%Y-%m-%d"), "words": counts.words,
                      "results": summary}, ensure_ascii=False))


if __name__ == "__main__":
    main()

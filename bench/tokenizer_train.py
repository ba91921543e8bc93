"""Benchmark: tokenizer training time, lingraft's trainer vs SentencePiece's, on the same text.

Both train a SentencePiece-style vocabulary (byte fallback, dummy prefix, identity
normalisation, whitespace-only pieces allowed) of the same size on the same RusLit lines,
with all CPU cores; both results are then measured on the UD Russian sentences so a speed
gain cannot hide a quality loss. Prints a side-by-side table; the last line is JSON.

    .venv/bin/python bench/tokenizer_train.py [--chars 10000000] [--vocab-size 32000] [--kinds bpe,unigram]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


import sentencepiece as spm  # noqa: E402

from lingraft.data_prep.readers import iter_texts  # noqa: E402
from lingraft.vocabulary.corpus import CorpusText  # noqa: E402
from lingraft.vocabulary.loading import load_tokenizer  # noqa: E402
from lingraft.vocabulary.stats import count_text, tokenizer_stats  # noqa: E402
from lingraft.vocabulary.training import TrainParams, scratch_pipeline, train_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("LINGRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared" / "data"))
MAX_LINE_BYTES = 1 << 16


def corpus_lines(max_chars: int) -> list[str]:
    """RusLit cut into non-empty lines (SentencePiece reads one sentence per line)."""
    corpus = CorpusText([str(SHARED / "ru_text" / "ruslit.jsonl.xz")], max_chars=max_chars, desc="RusLit")
    return [line for doc in corpus for line in doc.split("\n") if line.strip()]


def train_sentencepiece(lines: list[str], kind: str, vocab_size: int, workdir: Path) -> tuple[float, Path]:
    text_file = workdir / "corpus.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = workdir / f"spm_{kind}"
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(prefix), model_type=kind, vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=False, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", input_sentence_size=0,
        max_sentence_length=MAX_LINE_BYTES, num_threads=os.cpu_count(), minloglevel=2)
    return time.perf_counter() - start, prefix.with_suffix(".model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=10_000_000, help="RusLit characters to train on")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--kinds", default="bpe,unigram")
    args = ap.parse_args()

    lines = corpus_lines(args.chars)
    chars = sum(map(len, lines))
    held_out = list(iter_texts(str(SHARED / "ru_text" / "ud_russian_sentences.jsonl")))
    counts = count_text(held_out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            start = time.perf_counter()
            ours = train_tokenizer(lines, scratch_pipeline("sentencepiece", []), TrainParams(kind, args.vocab_size))
            ours_s = time.perf_counter() - start
            spm_s, model_path = train_sentencepiece(lines, kind, args.vocab_size, Path(tmp))
            theirs = load_tokenizer(model_path)
            for name, tok, secs in (("lingraft", ours, ours_s), ("sentencepiece", theirs, spm_s)):
                s = tokenizer_stats(tok, held_out, counts)
                rows.append({"kind": kind, "trainer": name, "seconds": round(secs, 1),
                             "chars_per_second": round(chars / secs), "vocab": len(tok),
                             "ud_tokens_per_word": round(s.tokens_per_word, 3),
                             "ud_chars_per_token": round(s.chars_per_token, 3)})
    print(f"train text: {chars:,} chars of RusLit in {len(lines):,} lines; vocab {args.vocab_size:,}; "
          f"{os.cpu_count()} CPU threads")
    print(f"{'kind':8} {'trainer':14} {'seconds':>8} {'Mchar/s':>8} {'vocab':>7} "
          f"{'UD tok/word':>12} {'UD chars/tok':>13}")
    for r in rows:
        print(f"{r['kind']:8} {r['trainer']:14} {r['seconds']:8.1f} {r['chars_per_second'] / 1e6:8.2f} "
              f"{r['vocab']:7,} {r['ud_tokens_per_word']:12.3f} {r['ud_chars_per_token']:13.3f}")
    print(json.dumps({"bench": "tokenizer_train", "date": time.strftime("%Y-%m-%d"), "chars": chars,
                      "vocab_size": args.vocab_size, "threads": os.cpu_count(), "results": rows}))


if __name__ == "__main__":
    main()

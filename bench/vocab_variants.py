"""Benchmark: the four LEP vocabulary variants of Llama-3 and Mistral, trained on RusLit.

For each base: a full-replacement BPE and Unigram (training.py, `like: base`), Extended
(base + every new-BPE token the base lacks, English fineweb[:500] protected), Extended without
protection (held-out English, Python stdlib sources and number-heavy lines must keep their ids) and Optimized
(the base's `keep` tokens most used on RusLit + the `add` most used new tokens). Reported:
vocabulary size, tokens per word on the UD Russian sentences (target language) and on
fineweb[500:] (English, the forgetting side), and for Extended the share of held-out
English words whose ids changed. The last line printed is JSON.

    .venv/bin/python bench/vocab_variants.py [--max-chars 8000000] [--new-vocab 32000]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")

from lingraft.data_prep.readers import iter_texts  # noqa: E402
from lingraft.vocabulary.corpus import CorpusText  # noqa: E402
from lingraft.vocabulary.drift_samples import number_lines, python_sources  # noqa: E402
from lingraft.vocabulary.extend import extend, reencoded_words  # noqa: E402
from lingraft.vocabulary.loading import load_tokenizer  # noqa: E402
from lingraft.vocabulary.optimize import optimize  # noqa: E402
from lingraft.vocabulary.stats import count_text, tokenizer_stats  # noqa: E402
from lingraft.vocabulary.training import TrainParams, base_pipeline, train_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("LINGRAFT_SHARED", ROOT.parent / "shared" / "data"))
BASES = {  # name: (spec, Optimized keep, Optimized add)
    "llama3": ("tokenizers/llama3/tokenizer.json.xz", 64_000, 16_000),
    "mistral": ("tokenizers/mistral/mistral7b_v0.1_tokenizer.model", 16_000, 16_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chars", type=int, default=8_000_000, help="RusLit characters to train/count on")
    parser.add_argument("--new-vocab", type=int, default=32_000, help="size of the full-replacement vocabularies")
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    args = parser.parse_args()

    ruslit = list(CorpusText([str(SHARED / "ru_text/ruslit.jsonl.xz")], "text", args.max_chars))
    english = list(CorpusText([str(SHARED / "en_text/fineweb_en_sample.jsonl")], "text"))
    protect, held_out = english[:500], english[500:]
    ud = list(iter_texts(str(SHARED / "ru_text/ud_russian_sentences.jsonl")))
    ud_counts, en_counts = count_text(ud), count_text(held_out)
    drift_sets = {"held_out_english": held_out, "python_sources": python_sources(), "number_lines": number_lines()}

    results: dict[str, dict] = {}
    for name in args.bases:
        spec, keep, add = BASES[name]
        base = load_tokenizer(SHARED / spec)
        pipeline = base_pipeline(base, [])
        variants, seconds, extra = {"base": base}, {}, {}
        for kind in ("bpe", "unigram"):
            start = time.time()
            variants[f"full_{kind}"] = train_tokenizer(ruslit, pipeline, TrainParams(kind, args.new_vocab))
            seconds[f"full_{kind}"] = time.time() - start
        start = time.time()
        ext = extend(base, variants["full_bpe"], None, protect)
        variants["extended"], seconds["extended"] = ext.tokenizer, time.time() - start
        extra["extended"] = {**ext.counts, "held_out_english": reencoded_words(base, ext.tokenizer, len(base), held_out)}
        start = time.time()
        bare = extend(base, variants["full_bpe"], None)
        variants["extended_unprotected"], seconds["extended_unprotected"] = bare.tokenizer, time.time() - start
        extra["extended_unprotected"] = {**bare.counts, **{k: reencoded_words(base, bare.tokenizer, len(base), texts)
                                                           for k, texts in drift_sets.items()}}
        start = time.time()
        opt = optimize(base, variants["full_bpe"], ruslit, keep, add)
        variants["optimized"], seconds["optimized"] = opt.tokenizer, time.time() - start
        extra["optimized"] = opt.counts
        for variant, tok in variants.items():
            ru, en = tokenizer_stats(tok, ud, ud_counts), tokenizer_stats(tok, held_out, en_counts)
            results[f"{name}/{variant}"] = {"vocab": len(tok), "ru_tokens_per_word": round(ru.tokens_per_word, 3),
                                            "en_tokens_per_word": round(en.tokens_per_word, 3),
                                            "seconds": round(seconds.get(variant, 0.0), 1), **extra.get(variant, {})}
            print(f"{name:8s} {variant:12s} vocab {len(tok):7,d}  ru tok/word {ru.tokens_per_word:.3f}  "
                  f"en tok/word {en.tokens_per_word:.3f}  ({seconds.get(variant, 0.0):.1f}s)", flush=True)
        rate = extra["extended"]["held_out_english"]["changed_word_rate"]
        print(f"{name:8s} extended: {ext.counts['added']} new tokens, {ext.counts['rejected_by_protect']} refused "
              f"by protection, held-out English words re-encoded {100 * rate:.4f}%", flush=True)
        drift = {k: f"{v['changed_docs']}/{v['docs']}" for k, v in extra["extended_unprotected"].items()
                 if k in drift_sets}
        print(f"{name:8s} extended without protection: {bare.counts['added']} new tokens, refused by the rule "
              f"{bare.counts['refused_by_rule']}; documents re-encoded {drift}", flush=True)
    print(json.dumps({"bench": "vocab_variants", "ruslit_chars": sum(map(len, ruslit)), "new_vocab": args.new_vocab,
                      "ud_words": ud_counts.words, "en_held_out_words": en_counts.words, "results": results}))


if __name__ == "__main__":
    main()

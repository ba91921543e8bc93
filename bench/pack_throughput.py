"""Packing throughput: `prep pack` on all of RusLit (37 M characters) with the Llama-3 tokenizer.

Compared, in the same run and on the same texts, with
  (a) the raw tokenizer's `encode_batch` on the texts already in memory, its Rust thread pool
      sized to the same number of cores (the reference the ratio uses), and `encode_batch_fast`
      (no offsets; what the packer calls), reported beside it;
  (b) the usual recipe: `datasets.Dataset.from_list(...).map(tokenize, batched=True,
      num_proc=N)` followed by `group_texts` into 1024-token blocks (as in transformers'
      run_clm.py).
Packing is timed end to end (`run_pack`: checking the parts, loading the tokenizer, starting
the workers, tokenizing, writing and hashing the shards, the manifest); producing the clean
parts with `prep clean` beforehand is not timed. Token counts exclude the EOS the packer adds,
so all three count the same tokens. The best of --repeats interleaved runs counts for each.
Both ratios are time ratios on the same token count (higher is better for packing).

    .venv/bin/python bench/pack_throughput.py [--workers 2] [--repeats 2]

The last line is JSON: {"ratio_vs_raw_tokenizer", "ratio_vs_hf_recipe", "tokens_per_s"}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from itertools import chain
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))
BLOCK = 1024


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: a contention-robust second opinion
    beside wall time on a shared machine."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _clean_parts(tmp: Path) -> Path:
    from lingraft.data_prep.clean_config import CleanConfig, CleanStageConfig, NearDedupConfig
    from lingraft.data_prep.clean_stage import run_clean
    from lingraft.data_prep.readers import SourceConfig
    cfg = CleanStageConfig(sources=[SourceConfig(path=str(SHARED / "ru_text/ruslit.jsonl.xz"), name="ruslit")],
                           out=str(tmp / "clean"), clean=CleanConfig(near_dedup=NearDedupConfig(enabled=False)))
    return run_clean(cfg)


def _raw(backend, texts: list[str], fast: bool) -> tuple[int, float, float]:
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    start, cpu = time.perf_counter(), _cpu_seconds()
    encodings = encode(texts, add_special_tokens=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return sum(len(e) for e in encodings), seconds, cpu


def _pack(clean: Path, out: Path, tokenizer: str, workers: int) -> tuple[int, float, float]:
    from lingraft.data_prep.pack import run_pack
    from lingraft.data_prep.pack_config import PackConfig
    from lingraft.manifest import read_manifest
    shutil.rmtree(out, ignore_errors=True)
    cfg = PackConfig(out=out, tokenizer=tokenizer, input=clean, seq_len=BLOCK, eos_token="<|end_of_text|>",
                     workers=workers)
    start, cpu = time.perf_counter(), _cpu_seconds()
    run_pack(cfg)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    counts = read_manifest(out)["outputs"]["counts"]
    return counts["tokens"] - counts["docs"], seconds, cpu


def _hf_recipe(tok, texts: list[str], workers: int, cache: Path) -> tuple[int, float, float]:
    import datasets

    def tokenize(batch):
        return tok(batch["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated["input_ids"]) // BLOCK * BLOCK
        result = {k: [v[i:i + BLOCK] for i in range(0, total, BLOCK)] for k, v in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    datasets.disable_progress_bars()
    start, cpu = time.perf_counter(), _cpu_seconds()
    ds = datasets.Dataset.from_list([{"text": t} for t in texts])
    cache.mkdir(parents=True, exist_ok=True)
    tokenized = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"],
                       cache_file_name=str(cache / "tok.arrow"))
    grouped = tokenized.map(group_texts, batched=True, num_proc=workers, cache_file_name=str(cache / "grp.arrow"))
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return len(grouped) * BLOCK, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers/llama3/tokenizer.json.xz"))
    args = parser.parse_args()
    # The raw tokenizer gets as many Rust threads as packing gets worker processes.
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")
    from lingraft.data_prep.readers import iter_texts
    from lingraft.log import setup_logging
    from lingraft.vocabulary.loading import load_tokenizer
    setup_logging()

    tmp = Path(tempfile.mkdtemp(prefix="pack_bench_"))
    try:
        clean = _clean_parts(tmp)
        texts = [text for part in sorted(clean.glob("part_*.jsonl")) for text in iter_texts(str(part))]
        tok = load_tokenizer(args.tokenizer)
        backend = tok.backend_tokenizer
        raw_fast, raw_plain, packs, hf = [], [], [], []
        for i in range(args.repeats):   # interleaved, so load from other jobs hits all alike
            raw_fast.append(_raw(backend, texts, fast=True))
            raw_plain.append(_raw(backend, texts, fast=False))
            packs.append(_pack(clean, tmp / "packed", args.tokenizer, args.workers))
            hf.append(_hf_recipe(tok, texts, args.workers, tmp / f"hf{i}"))
            print(f"repeat {i}: encode_batch_fast {raw_fast[-1][1]:.2f}s, encode_batch {raw_plain[-1][1]:.2f}s, "
                  f"pack {packs[-1][1]:.2f}s, hf recipe {hf[-1][1]:.2f}s", flush=True)
        n_tokens = raw_fast[0][0]
        assert all(run[0] == n_tokens for run in raw_fast + raw_plain + packs), "token counts differ"
        (_, raw_s, raw_cpu), (_, fast_s, fast_cpu), (_, pack_s, pack_cpu), (hf_tokens, hf_s, hf_cpu) = (
            min(runs, key=lambda run: run[1]) for runs in (raw_plain, raw_fast, packs, hf))
        detail = {"chars": sum(map(len, texts)), "docs": len(texts), "tokens": n_tokens, "workers": args.workers,
                  "seconds": {"pack": round(pack_s, 2), "encode_batch": round(raw_s, 2),
                              "encode_batch_fast": round(fast_s, 2), "hf_recipe": round(hf_s, 2)},
                  "cpu_seconds": {"pack": round(pack_cpu, 2), "encode_batch": round(raw_cpu, 2),
                                  "encode_batch_fast": round(fast_cpu, 2), "hf_recipe": round(hf_cpu, 2)},
                  "ratio_vs_encode_batch_fast": round(fast_s / pack_s, 3),
                  "tokens_per_s": {"encode_batch": round(n_tokens / raw_s), "encode_batch_fast": round(n_tokens / fast_s),
                                   "hf_recipe": round(n_tokens / hf_s)},
                  "hf_recipe_block_tokens": hf_tokens,
                  "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps(detail))
        print(json.dumps({"ratio_vs_raw_tokenizer": round(raw_s / pack_s, 3),
                          "ratio_vs_hf_recipe": round(hf_s / pack_s, 3),
                          "tokens_per_s": round(n_tokens / pack_s)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

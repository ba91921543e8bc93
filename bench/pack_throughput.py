"""Packing throughput: `prep pack` on all of RusLit (37 M characters) with the Llama-3 tokenizer.

Compared, in the same run, on the same texts and with the same tokenizer threads, with
  (a) the limit: the raw tokenizer's `encode_batch_fast` (ids only, the call the packer
      makes) on the texts already in memory, its Rust thread pool sized to --threads;
  (b) the usual recipe: `datasets.Dataset.from_list(...).map(tokenize, batched=True,
      num_proc=--threads)` followed by `group_texts` into 1024-token blocks (as in
      transformers' run_clm.py).
Packing runs with --workers processes of --threads // workers tokenizer threads each (one
worker: threads of the packing process itself) and is timed end to end (`run_pack`:
checking the parts, loading the tokenizer, starting workers, reading, tokenizing, writing
and hashing the shards, the manifest); producing the clean parts with `prep clean`
beforehand is not timed. Token counts exclude the EOS the packer adds, so all three count
the same tokens. The three run interleaved, --repeats times (load from other jobs hits all
alike); each reports the median, the spread and the 1-minute load average around its runs.
Ratios are ratios of median times on the same token count (higher is better for packing).

    .venv/bin/python bench/pack_throughput.py [--threads 2] [--workers 1] [--repeats 3]

The last line is JSON: {"ratio_vs_encode_batch_fast", "ratio_vs_hf_recipe", "tokens_per_s"}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def _raw(backend, texts: list[str]) -> tuple[int, float, float]:
    start, cpu = time.perf_counter(), _cpu_seconds()
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
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
    try:
        ds = datasets.Dataset.from_list([{"text": t} for t in texts])
        cache.mkdir(parents=True, exist_ok=True)
        tokenized = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"],
                           cache_file_name=str(cache / "tok.arrow"))
        grouped = tokenized.map(group_texts, batched=True, num_proc=workers, cache_file_name=str(cache / "grp.arrow"))
    finally:
        # `map(num_proc=...)` sets TOKENIZERS_PARALLELISM=false in this process before it forks,
        # which would leave every later `encode_batch_fast` reference run on one thread.
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return len(grouped) * BLOCK, seconds, cpu


def _summary(runs: list[tuple[int, float, float, float]]) -> dict[str, float]:
    """Median, spread and load of (tokens, seconds, cpu_seconds, load_1m) runs."""
    seconds = [run[1] for run in runs]
    return {"median_s": round(statistics.median(seconds), 2), "min_s": round(min(seconds), 2),
            "max_s": round(max(seconds), 2), "cpu_s": round(statistics.median(run[2] for run in runs), 2),
            "load_1m": [round(run[3], 2) for run in runs]}


def _timed(step, *args) -> tuple[int, float, float, float]:
    tokens, seconds, cpu = step(*args)
    return tokens, seconds, cpu, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="tokenizer threads for every method")
    parser.add_argument("--workers", type=int, default=1, help="packing processes (threads // workers threads each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers/llama3/tokenizer.json.xz"))
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
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
        fast, packs, hf = [], [], []
        for i in range(args.repeats):   # interleaved, so load from other jobs hits all alike
            fast.append(_timed(_raw, backend, texts))
            packs.append(_timed(_pack, clean, tmp / "packed", args.tokenizer, args.workers))
            hf.append(_timed(_hf_recipe, tok, texts, args.threads, tmp / f"hf{i}"))
            print(f"repeat {i}: encode_batch_fast {fast[-1][1]:.2f}s, pack {packs[-1][1]:.2f}s, "
                  f"hf recipe {hf[-1][1]:.2f}s, load {os.getloadavg()[0]:.2f}", flush=True)
        n_tokens = fast[0][0]
        assert all(run[0] == n_tokens for run in fast + packs), "token counts differ"
        summary = {"encode_batch_fast": _summary(fast), "pack": _summary(packs), "hf_recipe": _summary(hf)}
        fast_s, pack_s, hf_s = (summary[k]["median_s"] for k in ("encode_batch_fast", "pack", "hf_recipe"))
        detail = {"chars": sum(map(len, texts)), "docs": len(texts), "tokens": n_tokens, "threads": args.threads,
                  "workers": args.workers, "repeats": args.repeats, **summary,
                  "paired_ratios_vs_encode_batch_fast": [round(f[1] / p[1], 3) for f, p in zip(fast, packs)],
                  "hf_recipe_block_tokens": hf[0][0], "cpu_count": os.cpu_count()}
        print(json.dumps(detail))
        print(json.dumps({"ratio_vs_encode_batch_fast": round(fast_s / pack_s, 3),
                          "ratio_vs_hf_recipe": round(hf_s / pack_s, 3),
                          "tokens_per_s": round(n_tokens / pack_s)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Packing throughput: `prep pack` on all of RusLit (37 M characters) with the Llama-3 tokenizer.

Compared, in the same run, on the same texts and with the same tokenizer threads, with
  (a) the limit: the raw tokenizer's `encode_batch_fast` (ids only, the call the packer
      makes) on the texts already in memory, its Rust thread pool sized to --threads, in a
      fresh process (so no earlier step's heap or imports slow it down) on the system malloc;
  (b) the usual recipe: `datasets.Dataset.from_list(...).map(tokenize, batched=True,
      num_proc=--threads)` followed by `group_texts` into 1024-token blocks (as in
      transformers' run_clm.py).
Packing runs with its defaults (one worker process per core, each preloading mimalloc or
jemalloc when installed, see `lingraft.preload`; --workers overrides) and is timed end to
end (`run_pack`: checking the parts, loading the tokenizer, starting workers, reading,
tokenizing, writing and hashing the shards, the manifest); producing the clean parts with
`prep clean` beforehand is not timed. When the packer preloads an allocator, (a) is also run
with that allocator preloaded, as a second reference: how much of the packer's speed is the
allocator's. Token counts exclude the EOS the packer adds, so all count the same tokens.
The steps run interleaved, --repeats times (load from other jobs hits all alike); each
reports the median, the spread and the 1-minute load average around its runs. Ratios are
ratios of median times on the same token count (higher is better for packing).

    .venv/bin/python bench/pack_throughput.py [--threads 2] [--workers N] [--repeats 3]

The last line is JSON: {"ratio_vs_encode_batch_fast", "ratio_vs_hf_recipe", "tokens_per_s"}, and
"ratio_vs_encode_batch_fast_same_allocator" when the packer preloads one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
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


def _raw(clean: Path, tokenizer: str, threads: int, allocator: str | None) -> tuple[int, float, float]:
    """`encode_batch_fast` timed in a fresh process (`--step raw`), on `allocator` if given."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    if allocator:
        env["LD_PRELOAD"] = allocator
    result = subprocess.run([sys.executable, __file__, "--step", "raw", "--clean", str(clean),
                            "--tokenizer", tokenizer], env=env, check=True, capture_output=True, text=True)
    run = json.loads(result.stdout.strip().splitlines()[-1])
    return run["tokens"], run["seconds"], run["cpu_s"]


def _raw_step(clean: Path, tokenizer: str) -> None:
    """The child of `_raw`: load the texts and the tokenizer untimed, then time the call."""
    from lingraft.data_prep.readers import iter_texts
    from lingraft.vocabulary.loading import load_tokenizer
    texts = [text for part in sorted(clean.glob("part_*.jsonl")) for text in iter_texts(str(part))]
    backend = load_tokenizer(tokenizer).backend_tokenizer
    start, cpu = time.perf_counter(), _cpu_seconds()
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    print(json.dumps({"tokens": sum(len(e) for e in encodings), "seconds": seconds, "cpu_s": cpu}))


def _pack(clean: Path, out: Path, tokenizer: str, workers: int | None) -> tuple[int, float, float]:
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
    parser.add_argument("--threads", type=int, default=2,
                        help="cores for every method (this process is pinned to that many)")
    parser.add_argument("--workers", type=int, default=None, help="packing processes (default: the packer's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers/llama3/tokenizer.json.xz"))
    parser.add_argument("--step", choices=["raw"], help=argparse.SUPPRESS)   # internal: the raw reference's child
    parser.add_argument("--clean", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "raw":
        return _raw_step(args.clean, args.tokenizer)
    cores = sorted(os.sched_getaffinity(0))
    if args.threads > len(cores):
        parser.error(f"--threads {args.threads}: only {len(cores)} cores are available")
    os.sched_setaffinity(0, cores[:args.threads])   # inherited by the raw reference and the packer's workers
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")
    from lingraft.data_prep.pack_encode import plan_workers
    from lingraft.data_prep.readers import iter_texts
    from lingraft.log import setup_logging
    from lingraft.manifest import read_manifest
    from lingraft.preload import find_allocator
    from lingraft.vocabulary.loading import load_tokenizer
    setup_logging()
    allocator = find_allocator("auto")
    preloads = plan_workers(args.workers, allocator, args.threads) > 1 and allocator is not None

    tmp = Path(tempfile.mkdtemp(prefix="pack_bench_"))
    try:
        clean = _clean_parts(tmp)
        texts = [text for part in sorted(clean.glob("part_*.jsonl")) for text in iter_texts(str(part))]
        tok = load_tokenizer(args.tokenizer)
        runs: dict[str, list] = {"encode_batch_fast": [], "pack": [], "hf_recipe": []}
        if preloads:
            runs["encode_batch_fast_preloaded"] = []
        for i in range(args.repeats):   # interleaved, so load from other jobs hits all alike
            runs["encode_batch_fast"].append(_timed(_raw, clean, args.tokenizer, args.threads, None))
            if preloads:
                runs["encode_batch_fast_preloaded"].append(_timed(_raw, clean, args.tokenizer, args.threads, allocator))
            runs["pack"].append(_timed(_pack, clean, tmp / "packed", args.tokenizer, args.workers))
            runs["hf_recipe"].append(_timed(_hf_recipe, tok, texts, args.threads, tmp / f"hf{i}"))
            print(f"repeat {i}: " + ", ".join(f"{name} {r[-1][1]:.2f}s" for name, r in runs.items())
                  + f", load {os.getloadavg()[0]:.2f}", flush=True)
        packed = read_manifest(tmp / "packed")["metrics"]
        assert packed["allocator"] == (allocator if preloads else None), \
            f"the packer ran on {packed['allocator']}, the reference assumed {allocator if preloads else None}"
        n_tokens = runs["encode_batch_fast"][0][0]
        assert all(run[0] == n_tokens for name, rs in runs.items() if name != "hf_recipe" for run in rs), \
            "token counts differ"
        summary = {name: _summary(rs) for name, rs in runs.items()}
        median = {name: summary[name]["median_s"] for name in runs}
        detail = {"chars": sum(map(len, texts)), "docs": len(texts), "tokens": n_tokens, "threads": args.threads,
                  "workers": packed["workers"], "allocator": packed["allocator"], "repeats": args.repeats,
                  **summary, "paired_ratios_vs_encode_batch_fast": [
                      round(f[1] / p[1], 3) for f, p in zip(runs["encode_batch_fast"], runs["pack"])],
                  "hf_recipe_block_tokens": runs["hf_recipe"][0][0], "cpu_count": os.cpu_count()}
        print(json.dumps(detail))
        ratios = {"ratio_vs_encode_batch_fast": round(median["encode_batch_fast"] / median["pack"], 3),
                  "ratio_vs_hf_recipe": round(median["hf_recipe"] / median["pack"], 3)}
        if preloads:
            ratios["ratio_vs_encode_batch_fast_same_allocator"] = round(
                median["encode_batch_fast_preloaded"] / median["pack"], 3)
        print(json.dumps({**ratios, "tokens_per_s": round(n_tokens / median["pack"])}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

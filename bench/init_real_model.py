"""Embedding initialisation on real weights: SmolLM2-135M-Instruct -> a 32k Russian BPE.

For every method (mean, weighted-mean, transtokenize per translation resource, random) this
runs `lingraft init` in a fresh process (so time and peak RSS are its own), then scores bits
per character of the original and of every new model on the same UD Russian sentences.
It also times a naive load / resize / save with transformers for comparison.

    .venv/bin/python bench/init_real_model.py [--eval-docs 200] [--work DIR]

Prints a table, then one JSON line with every number.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))
UD = SHARED / "ru_text" / "ud_russian_sentences.jsonl"
RESOURCES = {
    "pud_parallel": f"{SHARED}/parallel/pud_en_ru.jsonl",
    "mueller_dictionary": f"{SHARED}/parallel/mueller7_en_ru.jsonl.xz,kind=dictionary",
    "gettext_ui": f"{SHARED}/parallel/gettext_en_ru.jsonl.xz,markup=gettext",
}


def lingraft(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lingraft.cli", *args], capture_output=True, text=True,
                            env={**os.environ, "LINGRAFT_NO_PROGRESS": "1"})
    if result.returncode:
        raise SystemExit(f"lingraft {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def tokenizer_32k(model: Path, work: Path) -> Path:
    """A 32k BPE with SmolLM2's own byte-level pipeline, learned on RusLit (cached in `work`)."""
    out = work / "ruslit-bpe-32k"
    if not (out / "manifest.json").is_file():
        seconds, _ = lingraft("tokenizer", "train", "--data", str(SHARED / "ru_text" / "ruslit.jsonl.xz"),
                              "--out", str(out), "--vocab-size", "32000", "--like", str(model))
        print(f"trained the 32k tokenizer in {seconds:.0f} s", file=sys.stderr)
    return out


def naive(model: str, tokenizer: str, token_map: str, out: str) -> None:
    """What `init` replaces: load everything, resize, set rows, save (run in its own process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lingraft.memory import peak_rss_bytes
    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.token_map import TokenMap
    start = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    net = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
    old = net.get_input_embeddings().weight.detach().clone()
    tmap = TokenMap.load(token_map)
    net.resize_token_embeddings(len(tok), pad_to_multiple_of=64, mean_resizing=False)
    with torch.no_grad():
        net.get_input_embeddings().weight[:tmap.new_vocab] = tmap.apply(old[:tmap.old_vocab])
    net.save_pretrained(out)
    tok.save_pretrained(out)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2),
                      "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1)}))


def score(folders: dict[str, Path], docs: int) -> dict[str, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from lingraft.data_prep.readers import iter_texts
    from lingraft.evaluation.bpc import bits_per_character
    from lingraft.vocabulary.loading import load_tokenizer
    texts = list(itertools.islice(iter_texts(str(UD)), docs))
    results = {}
    for name, folder in folders.items():
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        r = bits_per_character(model, load_tokenizer(folder), texts)
        results[name] = {"bpc": round(r.bits_per_character, 4), "chars_per_token": round(r.characters_per_token, 3),
                         "tokens": r.tokens, "characters": r.characters, "seconds": round(time.perf_counter() - start)}
        print(f"bpc {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-docs", type=int, default=200, help="UD sentences to score")
    parser.add_argument("--work", default=str(REPO / ".cache" / "bench_init"))
    parser.add_argument("--naive", nargs=4, metavar=("MODEL", "TOKENIZER", "TOKEN_MAP", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        return naive(*args.naive)
    from lingraft.real_model import smollm2_path
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = smollm2_path()
    tokenizer = tokenizer_32k(model, work)
    runs: dict[str, list[str]] = {"mean": ["--method", "mean"], "weighted-mean": ["--method", "weighted-mean"],
                                  "random": ["--method", "random"]}
    for name, spec in RESOURCES.items():
        runs[f"transtokenize:{name}"] = ["--method", "transtokenize", "--translation-resource", spec,
                                         "--old-language", "en", "--new-language", "ru"]
    inits: dict[str, dict] = {}
    folders: dict[str, Path] = {"original": model}
    for name, flags in runs.items():
        out = work / name.replace(":", "-")
        seconds, _ = lingraft("init", "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out), *flags)
        metrics = json.loads((out / "manifest.json").read_text())["metrics"]
        inits[name] = {"wall_seconds": round(seconds, 1), "surgery_seconds": metrics["surgery_seconds"],
                       "surgery_peak_rss_mb": metrics["surgery_peak_rss_mb"], "provenance": metrics["provenance"]}
        folders[name] = out
        print(f"init {name}: {inits[name]}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--naive", str(model), str(tokenizer),
                             str(work / "mean" / "token_map.safetensors"), str(work / "naive")],
                            capture_output=True, text=True, check=True)
    naive_stats = {**json.loads(result.stdout.strip().splitlines()[-1]),
                   "wall_seconds": round(time.perf_counter() - start, 1)}
    bpc = score(folders, args.eval_docs)
    print(f"{'method':<34}{'bpc':>8}{'chars/tok':>11}{'init s':>9}{'RSS MB':>9}")
    for name, r in bpc.items():
        i = inits.get(name, {})
        print(f"{name:<34}{r['bpc']:>8.4f}{r['chars_per_token']:>11.3f}"
              f"{i.get('wall_seconds', float('nan')):>9.1f}{i.get('surgery_peak_rss_mb', float('nan')):>9.0f}")
    print(f"naive transformers load/resize/save: {naive_stats}")
    print(json.dumps({"bench": "init_real_model", "model": "SmolLM2-135M-Instruct", "tokenizer": str(tokenizer),
                      "eval_docs": args.eval_docs, "bpc": bpc, "init": inits, "naive": naive_stats}))


if __name__ == "__main__":
    main()

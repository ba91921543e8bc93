"""Initialisation quality on real weights: every init method, right after init and after N training steps.

SmolLM2-135M-Instruct (B) with the demo's Extended vocabulary. For each method this runs
`lingraft init`, scores bits per character on held-out UD Russian, the held-out author and
English FineWeb, then trains the new rows for `--steps` steps (the demo's train settings) and
scores again. Every figure is a ratio to B measured in the same run; wall time is init's own.

Needs the demo's data stages (clean, heldout_author, extended, pack):

    .venv/bin/lingraft pipeline --config configs/demo.yaml --until init
    .venv/bin/python bench/init_quality.py [--work runs/demo] [--methods mean,distill] [--steps 50]

Prints a table, then one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))


def lingraft(*args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lingraft.cli", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "LINGRAFT_NO_PROGRESS": "1"})
    if result.returncode:
        raise SystemExit(f"lingraft {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def eval_sets(work: Path) -> dict[str, str]:
    return {"ud_russian": str(SHARED / "ru_text" / "ud_russian_sentences.jsonl"),
            "heldout_author": str(work / "heldout_author"),
            "english": str(SHARED / "en_text" / "fineweb_en_sample.jsonl")}


def bpc(model: str, sets: dict[str, str], max_chars: int, out: Path) -> dict[str, float]:
    """One `lingraft eval bpc` over every set: the model loads once, one record per set."""
    from lingraft.evaluation.results import read_results
    data = [arg for name, path in sets.items() for arg in ("--data", f"{name}={path}")]
    lingraft("eval", "bpc", "--model", model, *data, "--max-chars", max_chars, "--max-length", 512, "--out", out)
    return {r.label: r.metrics["bits_per_char"] for r in read_results(out)}


def init_args(method: str, work: Path, model: str) -> list[str]:
    args = ["init", "--model", model, "--tokenizer", work / "extended", "--method", method, "--pad-to-multiple", 1]
    return args + (["--corpus", work / "clean"] if method == "distill" else [])


def train_and_export(init_dir: Path, work: Path, out: Path, steps: int) -> Path:
    lingraft("train", "--model", init_dir, "--data", work / "pack", "--out", out / "train", "--max-steps", steps,
             "--backend", "local", "--trainable", "new_rows", "--micro-batch-size", 4, "--grad-accum-steps", 1,
             "--set", "optim.lr=1e-3", "--set", "optim.warmup_steps=10", "--set", "log.plot=false",
             "--set", "log.tensorboard=false", "--set", f"checkpoint.every_steps={steps}")
    lingraft("export", "--checkpoint", out / "train", "--out", out / "export")
    return out / "export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "demo"), help="the demo's work folder")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_init_quality"))
    parser.add_argument("--methods", default="mean,weighted-mean,distill")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-chars", type=int, default=10000)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    for stage in ("clean", "heldout_author", "extended", "pack"):
        if not (work / stage / "manifest.json").is_file():
            raise SystemExit(f"{work / stage} is missing: run `lingraft pipeline --config configs/demo.yaml "
                             f"--until init` first")
    from lingraft.demo_model import smollm2_path
    base = str(smollm2_path())
    sets = eval_sets(work)
    results: dict[str, dict] = {"B": {"bpc": bpc(f"B={base}", sets, args.max_chars, out / "B")}}
    for method in args.methods.split(","):
        folder = out / method
        seconds = lingraft(*init_args(method, work, base), "--out", folder / "init")
        after_init = bpc(f"{method}={folder / 'init'}", sets, args.max_chars, folder / "eval_init")
        start = time.perf_counter()
        trained = train_and_export(folder / "init", work, folder, args.steps)
        train_seconds = time.perf_counter() - start
        after_train = bpc(f"{method}+{args.steps}={trained}", sets, args.max_chars, folder / "eval_trained")
        results[method] = {"init_seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1),
                           "bpc_init": after_init, "bpc_trained": after_train}
    base_bpc = results["B"]["bpc"]
    print(f"{'method':<15}{'init s':>8}" + "".join(f"{s + ' init':>20}{s + f' +{args.steps}':>20}" for s in sets))
    for method, r in results.items():
        if method == "B":
            continue
        row = "".join(f"{r['bpc_init'][s] / base_bpc[s]:>20.3f}{r['bpc_trained'][s] / base_bpc[s]:>20.3f}"
                      for s in sets)
        print(f"{method:<15}{r['init_seconds']:>8.0f}{row}")
    load = os.getloadavg()
    print(json.dumps({"base_bpc": base_bpc, "steps": args.steps, "max_chars": args.max_chars,
                      "load_average": [round(x, 2) for x in load], "methods": {
                          m: {**r, "ratio_init": {s: round(r["bpc_init"][s] / base_bpc[s], 4) for s in sets},
                              "ratio_trained": {s: round(r["bpc_trained"][s] / base_bpc[s], 4) for s in sets}}
                          for m, r in results.items() if m != "B"}}))


if __name__ == "__main__":
    main()

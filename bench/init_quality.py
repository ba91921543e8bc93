"""Initialisation quality on real weights: every init method, right after init and after N training steps.

SmolLM2-135M-Instruct (B) with the demo's Extended vocabulary. For each method this runs
the demo config's `init` stage with that method, scores bits per character on held-out UD
Russian, the held-out author and English FineWeb, then runs the config's `train` stage (the
new rows, its objective, learning rate and precision) for `--steps` steps and scores again.
Every figure is a ratio to B measured in the same run; wall time is init's own.

Needs the demo's data stages (clean, heldout_author, extended, pack):

    .venv/bin/lingraft pipeline --config configs/demo.yaml --until init
    .venv/bin/python bench/init_quality.py [--config configs/demo.yaml] [--methods mean,distill] [--steps 50]

Prints a table, then one JSON line with every number.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

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


def demo_stages(config: Path, work: Path) -> dict[str, Any]:
    """The demo pipeline's resolved stage configs, its work folder moved to `work`."""
    from lingraft.config import build_config
    from lingraft.pipeline import PipelineConfig, plan
    os.environ.setdefault("LINGRAFT_SHARED", str(SHARED))
    pipeline = dataclasses.replace(build_config(PipelineConfig, config), work_dir=work)
    return {stage.spec.name: stage.config for stage in plan(pipeline)}


def run_stage(command: str, stage: Any, changes: dict[str, Any], folder: Path) -> float:
    """`lingraft COMMAND --config` with a stage's config, `changes` on top; returns the wall time."""
    from lingraft.config import to_dict
    tree = to_dict(stage)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{command}.yaml"
    config.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return lingraft(command, "--config", config)


def init_changes(method: str, out: Path) -> dict[str, Any]:
    """The demo's init stage as `method` into `out`; the corpus stays only where the method reads one."""
    from lingraft.vocabulary.init_config import CORPUS_METHODS
    return {"method": method, "out": str(out)} | ({} if method in CORPUS_METHODS else {"corpus": []})


def train_and_export(train_stage: Any, init_dir: Path, out: Path, steps: int) -> Path:
    run_stage("train", train_stage, {"model": str(init_dir), "out_dir": str(out / "train"), "max_steps": steps,
                                     "optim.warmup_steps": min(train_stage.optim.warmup_steps, steps),
                                     "checkpoint.every_steps": steps, "log.plot": False}, out)
    lingraft("export", "--checkpoint", out / "train", "--out", out / "export")
    return out / "export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"),
                        help="the pipeline whose init and train stages are measured")
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
    stages = demo_stages(Path(args.config), work)
    base = str(stages["init"].model)      # B: the model the config's init starts from
    sets = eval_sets(work)
    results: dict[str, dict] = {"B": {"bpc": bpc(f"B={base}", sets, args.max_chars, out / "B")}}
    for method in args.methods.split(","):
        folder = out / method
        seconds = run_stage("init", stages["init"], init_changes(method, folder / "init"), folder)
        after_init = bpc(f"{method}={folder / 'init'}", sets, args.max_chars, folder / "eval_init")
        start = time.perf_counter()
        trained = train_and_export(stages["train"], folder / "init", folder, args.steps)
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

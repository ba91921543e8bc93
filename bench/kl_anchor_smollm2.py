"""Does the KL anchor keep English while SmolLM2-135M-Instruct trains on Russian?

Two continued pre-training runs of the real SmolLM2-135M-Instruct on the same RusLit text,
packed with SmolLM2's own tokenizer, with the same seed, data order, schedule and steps:

  ce      loss = CE                                    (anchor.weight = 0)
  ce_kl   loss = CE + weight * KL(p_model ‖ p_ref)     (anchor.weight = --weight; the
          reference is the original model, anchor.tokens=all: one vocabulary)

Then bits per character (evaluation/bpc.py) of the original model and of both results on
English (fineweb_en_sample documents, the forgetting check) and on Russian (UD Russian
sentences, held out: not RusLit). Everything runs through the real trainer (`train.loop.train`,
local backend, CPU fp32) and the real packer (`data_prep.pack.run_pack`).

    .venv/bin/python bench/kl_anchor_smollm2.py [--steps 16] [--weight 1.0] [--trainable full]

The last line is JSON: bpc per model and language, and the English bpc increase of each
run over the original (the anchor helps when ce_kl's increase is the smaller one).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data")).resolve()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--weight", type=float, default=1.0, help="anchor.weight of the ce_kl run")
    ap.add_argument("--trainable", default="full", help="full, or layers with --layers")
    ap.add_argument("--layers", default="", help="comma-separated module names for --trainable layers")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ru-chars", type=int, default=200_000, help="RusLit characters to pack (whole works)")
    ap.add_argument("--en-docs", type=int, default=8, help="fineweb documents scored for English bpc")
    ap.add_argument("--en-doc-chars", type=int, default=1500, help="each English document cut to this length")
    ap.add_argument("--ru-sentences", type=int, default=50, help="UD Russian sentences scored for Russian bpc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    return ap.parse_args()


def pack_russian(model_dir: Path, out: Path, args: argparse.Namespace) -> Path:
    from lingraft.data_prep.clean_config import MixConfig
    from lingraft.data_prep.pack import run_pack
    from lingraft.data_prep.pack_config import PackConfig
    from lingraft.data_prep.readers import SourceConfig
    cfg = PackConfig(out=out, tokenizer=str(model_dir), seq_len=args.seq,
                     sources=[SourceConfig(path=str(SHARED / "ru_text" / "ruslit.jsonl.xz"), name="ruslit")],
                     mix=MixConfig(max_chars=args.ru_chars))
    return run_pack(cfg)


def eval_texts(args: argparse.Namespace) -> dict[str, list[str]]:
    with open(SHARED / "en_text" / "fineweb_en_sample.jsonl", encoding="utf-8") as fh:
        english = [json.loads(line)["text"][:args.en_doc_chars] for line in itertools.islice(fh, args.en_docs)]
    with open(SHARED / "ru_text" / "ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        russian = [json.loads(line)["text"] for line in itertools.islice(fh, args.ru_sentences)]
    return {"en": english, "ru": russian}


def train_run(model_dir: Path, data: Path, out_dir: Path, weight: float, args: argparse.Namespace) -> tuple[Path, float]:
    from lingraft.config import build_config
    from lingraft.train.config import TrainConfig
    from lingraft.train.loop import train
    overrides = {"model": str(model_dir), "data": str(data), "out_dir": str(out_dir), "max_steps": args.steps,
                 "backend": "local", "device": "cpu", "trainable": args.trainable, "seed": args.seed,
                 "micro_batch_size": args.micro_batch, "grad_accum_steps": 1,
                 "optim": {"lr": args.lr, "warmup_steps": max(1, args.steps // 10)},
                 "checkpoint": {"every_steps": args.steps, "keep_last": 1},
                 "log": {"tensorboard": False, "plot": False}, "anchor": {"weight": weight}}
    if args.trainable == "layers":
        overrides["trainable_modules"] = [m for m in args.layers.split(",") if m]
    start = time.perf_counter()
    final = train(build_config(TrainConfig, overrides=overrides))
    return final, time.perf_counter() - start


def bpc(model, tokenizer, texts: dict[str, list[str]]) -> dict[str, float]:
    from lingraft.evaluation.bpc import bits_per_character
    return {lang: bits_per_character(model, tokenizer, docs, max_length=512).bits_per_character
            for lang, docs in texts.items()}


def trained_model(model_dir: Path, final: Path):
    """The original weights with the run's trained tensors loaded over them."""
    from transformers import AutoModelForCausalLM

    from lingraft.train.backends.local_backend import read_trainable_state
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    missing, unexpected = model.load_state_dict(read_trainable_state(final / "engine"), strict=False)
    if unexpected:
        raise RuntimeError(f"checkpoint tensors the model lacks: {unexpected[:3]}")
    return model


def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingraft.log import setup_logging
    from lingraft.demo_model import smollm2_path
    from lingraft.train.metrics_log import read_metrics
    setup_logging()
    torch.manual_seed(args.seed)
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = eval_texts(args)
    with tempfile.TemporaryDirectory(prefix="kl_anchor_") as tmp:
        work = args.work_dir or Path(tmp)
        data = pack_russian(model_dir, work / "ruslit_packed", args)
        results = {"original": bpc(AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"), tokenizer, texts)}
        runs = {}
        for name, weight in (("ce", 0.0), ("ce_kl", args.weight)):
            final, seconds = train_run(model_dir, data, work / name, weight, args)
            results[name] = bpc(trained_model(model_dir, final), tokenizer, texts)
            last = read_metrics(work / name)[-1]
            runs[name] = {"train_seconds": round(seconds, 1), "final_loss": last["loss"],
                          "final_ce": last.get("ce", last["loss"]), "final_kl": last.get("kl")}
            print(json.dumps({"run": name, **runs[name], "bpc": results[name]}), flush=True)
    en_increase = {name: results[name]["en"] - results["original"]["en"] for name in ("ce", "ce_kl")}
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "steps": args.steps, "weight": args.weight, "trainable": args.trainable,
        "seq_len": args.seq, "micro_batch": args.micro_batch, "lr": args.lr,
        "tokens_per_run": args.steps * args.micro_batch * args.seq,
        "bpc": results, "en_bpc_increase": en_increase, "runs": runs,
        "kl_keeps_english_closer": en_increase["ce_kl"] < en_increase["ce"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()

"""One-GPU check of the training path: a ~1B Llama-shaped random model, bf16, document masking.

    bench/gpu_check.sh                     # the GPU run (under 8 minutes on one H100/H200)
    .venv/bin/python bench/gpu_check.py --tiny     # the same path on CPU with a tiny model (tests)

Trains `trainable=embeddings` and `trainable=new_rows` (local backend, bf16 autocast,
flash-attn varlen if installed, else flex attention; sdpa with an explicit mask on CPU) on
random packed samples whose documents restart the position ids, so the document mask is
exercised. Then exports the new_rows run with `lingraft export` and checks that every old
row of the (tied) table is bit-identical to the base model's.

The last line is JSON: per run the median tokens/s, MFU (peak FLOPs by GPU model, see
train/flops.py), step time and peak memory over the timed steps, and "old_rows_identical".
Exit status 1 if the old rows moved or a run logged no step.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from train_step import RandomPacked   # bench/ is the script's folder: the benches share one data source

# Llama-3.2-1B's shape (1.24 B parameters with the tied 128k table) and a CPU-sized stand-in.
SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
}
EMBED = "model.embed_tokens.weight"


def make_model(folder: Path, shape: dict, device: str) -> int:
    """A random bf16 Llama saved as a Hugging Face folder; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=8192, torch_dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def attention_kernel(device: str) -> str:
    if device == "cpu":
        return "sdpa"
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"


def train_run(args, workdir: Path, trainable: str, device: str, extra: dict) -> dict:
    """Train one mode; the median of the logged rows after the warm-up steps."""
    from lingraft.config import build_config
    from lingraft.train.config import TrainConfig
    from lingraft.train.loop import train
    from lingraft.train.metrics_log import read_metrics
    out = workdir / trainable
    cfg = build_config(TrainConfig, overrides={
        "model": str(workdir / "base"), "data": "in-memory", "out_dir": str(out), "backend": "local",
        "trainable": trainable, "precision": "bf16", "device": device, "attention": attention_kernel(device),
        "doc_mask": True, "max_steps": args.steps, "micro_batch_size": args.micro_batch,
        "grad_accum_steps": args.accum, "optim": {"warmup_steps": 2, "lr": 1e-3},
        "checkpoint": {"every_steps": 10**6, "keep_last": 1, "resume": False},
        "log": {"tensorboard": False, "plot": False, **({"peak_tflops": args.peak_tflops} if args.peak_tflops else {})},
        **extra})
    vocab = SHAPES[args.shape]["vocab_size"]
    train(cfg, lambda c, d: RandomPacked(vocab, args.seq, d.rank, count=args.steps * args.micro_batch * args.accum))
    rows = read_metrics(out)[args.warmup:]
    if not rows:
        return {"steps_timed": 0}

    def median(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 6) if values else None
    return {"steps_timed": len(rows), "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
            "step_s": median("step_time_s"), "peak_mem_gib": median("peak_mem_gib"), "final_loss": rows[-1]["loss"]}


def old_rows_identical(workdir: Path, new_ids: range) -> tuple[bool, int]:
    """Export the new_rows run; (every old row bit-identical to the base, how many new rows moved)."""
    import torch
    from safetensors import safe_open

    from lingraft.cli import main as lingraft
    if lingraft(["export", "--checkpoint", str(workdir / "new_rows"), "--out", str(workdir / "exported")]) != 0:
        raise SystemExit("gpu_check: lingraft export failed")
    tables = []
    for folder in (workdir / "base", workdir / "exported"):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            tables.append(fh.get_tensor(EMBED))
    base, exported = tables
    is_new = torch.zeros(base.shape[0], dtype=torch.bool)
    is_new[new_ids.start:new_ids.stop] = True
    same = torch.equal(base[~is_new].to(exported.dtype), exported[~is_new])
    moved = int((base[is_new].to(exported.dtype) != exported[is_new]).any(dim=1).sum())
    return same, moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model: the check's own test")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; tiny 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; tiny 1)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sample (default 4096; tiny 64)")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--new-rows", type=int, default=None, help="trained rows at the end of the table "
                        "(default 28,256: the 100k-128k range; tiny 128)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's peak (log.peak_tflops)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.shape = "tiny" if tiny else "1b"
    args.steps = args.steps or (4 if tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    args.seq = args.seq or (64 if tiny else 4096)
    args.peak_tflops = args.peak_tflops or (1.0 if tiny else None)   # CPU: any peak, so the MFU path runs
    vocab = SHAPES[args.shape]["vocab_size"]
    new_ids = range(vocab - (args.new_rows or (128 if tiny else 28256)), vocab)

    import torch

    from lingraft.log import setup_logging
    setup_logging()
    device = "cpu" if tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --tiny for the CPU check)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lingraft-gpu-check-") as tmp:
        workdir = args.workdir or Path(tmp)
        params = make_model(workdir / "base", SHAPES[args.shape], device)
        runs = {"embeddings": train_run(args, workdir, "embeddings", device, {}),
                "new_rows": train_run(args, workdir, "new_rows", device,
                                      {"new_token_ids": f"{new_ids.start}:{new_ids.stop}"})}
        identical, moved = old_rows_identical(workdir, new_ids)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "attention": attention_kernel(device), "params": params, "seq": args.seq,
              "tokens_per_step": args.micro_batch * args.accum * args.seq, "runs": runs,
              "old_rows_identical": identical, "new_rows_moved": moved, "new_rows": len(new_ids),
              "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return 0 if identical and all(r["steps_timed"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

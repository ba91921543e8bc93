"""SFT on real weights: does a short LoRA (or full) run lower the held-out answer loss?

SmolLM2-135M-Instruct (lingraft.demo_model) on the shared Russian chats: the 500
arena-hard chats (long Qwen3-235B answers) are split into train and held-out by position;
the 137 Alpaca seed tasks (as user/assistant chats) are added to the training side. Both
sides go through `lingraft prep sft` (chat template, assistant-only mask, packed samples),
the run through `train.loop.train` (local backend) and `lingraft export` (adapters merged),
so the whole path is measured, not a shortcut. The held-out answer loss is the mean
cross-entropy per answer token (prompt tokens carry no loss), before and after, over the
same packed held-out samples.

    .venv/bin/python bench/sft_smollm2.py [--mode lora|full] [--steps 40] [--seq-len 256] [--lora-last-layers 10]

The last line is JSON: heldout_answer_loss_before/after, the relative drop, the run's
settings and timings.
"""
from __future__ import annotations

import argparse
import json
import lzma
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
ARENA = SHARED / "instruct" / "ru_arena_hard_qwen3_235b_answers.jsonl.xz"
SEED_TASKS = SHARED / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"


def write_split(work: Path, heldout: int) -> tuple[Path, Path]:
    from lingraft.data_prep.chat import alpaca_messages
    with lzma.open(ARENA, "rt", encoding="utf-8") as fh:
        arena = [json.loads(line)["messages"] for line in fh]
    seed = []
    for line in SEED_TASKS.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        seed += [alpaca_messages(task["instruction"], i["input"], i["output"]) for i in task["instances"]]
    train_chats, heldout_chats = arena[:-heldout] + seed, arena[-heldout:]
    paths = []
    for name, chats in (("train", train_chats), ("heldout", heldout_chats)):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in chats),
                        encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def answer_loss(model_dir: Path, data_dir: Path, batch_size: int = 4) -> tuple[float, int]:
    """Mean cross-entropy per target (answer) token over every held-out sample, and the token count."""
    import torch
    from transformers import AutoModelForCausalLM

    from lingraft.data_prep.dataset import IGNORE_INDEX, PackedDataset
    from lingraft.train.loss import micro_batch_loss
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    samples = list(PackedDataset(data_dir, shuffle=False))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = {k: torch.stack([s[k] for s in chunk]) for k in ("input_ids", "labels", "position_ids")}
            targets = int((batch["labels"] != IGNORE_INDEX).sum())
            total += float(micro_batch_loss(model, batch, "sdpa", doc_mask=True)) * targets
            count += targets
    return total / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lora-last-layers", type=int, default=None,
                        help="adapters on the last N blocks only (backward stops there: cheaper on CPU); default all")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (lora), 5e-5 (full)")
    parser.add_argument("--heldout", type=int, default=40, help="arena chats held out (the last ones)")
    parser.add_argument("--work", type=Path, default=None, help="keep the packed data, run and export here")
    args = parser.parse_args()

    from lingraft.config import build_config
    from lingraft.log import setup_logging
    from lingraft.demo_model import smollm2_path
    from lingraft.data_prep.sft_config import SftPackConfig
    from lingraft.data_prep.sft_pack import run_sft_pack
    from lingraft.train.config import TrainConfig
    from lingraft.train.export import ExportConfig, export
    from lingraft.train.loop import train
    setup_logging()
    base = smollm2_path()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sft-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    train_jsonl, heldout_jsonl = write_split(work, args.heldout)
    packed = {name: run_sft_pack(SftPackConfig(input=[str(path)], tokenizer=str(base), out=str(work / name),
                                               seq_len=args.seq_len))
              for name, path in (("train_data", train_jsonl), ("heldout_data", heldout_jsonl))}
    pack_s = time.perf_counter() - started

    before, targets = answer_loss(base, packed["heldout_data"])
    lr = args.lr or (1e-3 if args.mode == "lora" else 5e-5)
    cfg = build_config(TrainConfig, overrides={
        "model": str(base), "data": str(packed["train_data"]), "out_dir": str(work / "run"), "backend": "local",
        "device": "cpu", "max_steps": args.steps, "micro_batch_size": args.micro_batch, "trainable": args.mode,
        "optim": {"lr": lr, "warmup_steps": max(1, args.steps // 10), "weight_decay": 0.0},
        "checkpoint": {"every_steps": args.steps, "resume": False}, "log": {"tensorboard": False, "plot": False},
        **({"lora": {"layers": list(range(-args.lora_last_layers, 0))}} if args.lora_last_layers else {})})
    started = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - started
    exported = export(ExportConfig(checkpoint=work / "run", out=work / "hf"))
    after, _ = answer_loss(exported, packed["heldout_data"])

    pack_metrics = json.loads((packed["train_data"] / "manifest.json").read_text())["metrics"]
    print(json.dumps({
        "bench": "sft_smollm2", "mode": args.mode, "steps": args.steps, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "lr": lr, "lora_last_layers": args.lora_last_layers,
        "train_chats": pack_metrics["chats_kept"],
        "train_truncated": pack_metrics["truncated"].get("chats", 0), "fill_ratio": pack_metrics["fill_ratio"],
        "heldout_chats": args.heldout, "heldout_answer_tokens": targets,
        "heldout_answer_loss_before": round(before, 4), "heldout_answer_loss_after": round(after, 4),
        "relative_drop": round((before - after) / before, 4), "pack_s": round(pack_s, 1),
        "train_s": round(train_s, 1), "work": str(work)}))


if __name__ == "__main__":
    main()

"""Skill packs on SmolLM2-135M-Instruct: pack size against the dense delta, and bits per character
of the applied pack against the fine-tuned model, at several energy fractions β.

1. A short fine-tune: plain-PyTorch AdamW on RusLit text (no decay on embeddings and norms, so
   the embedding delta is the rows of the tokens seen), saved as the tuned model.
2. For each β: `skillpack create` (int8 top band, int4 rest, unless --precision says
   otherwise), `skillpack verify` (overall relative error of the delta), `skillpack apply`
   onto the base, then bits per character (evaluation.bpc) of the applied model on held-out
   text (the same RusLit work, right after the part the fine-tune read), next to the base's
   and the tuned model's.

"gain kept" = (bpc_base − bpc_applied) / (bpc_base − bpc_tuned): 1 means the pack carries the
whole fine-tune. Everything is written under a temporary folder that is deleted afterwards.

    .venv/bin/python bench/skillpack_smollm2.py [--steps 30] [--betas 0.5,0.8,0.9,0.95,0.99]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))
os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")


def ruslit(skip: int, count: int) -> list[str]:
    from lingraft.data_prep.readers import iter_texts
    return list(islice(iter_texts(SHARED / "ru_text" / "ruslit.jsonl.xz", "text"), skip, skip + count))


def fine_tune(base: Path, out: Path, text: str, steps: int, batch: int, seq: int, lr: float) -> dict:
    """`steps` AdamW steps of next-token loss on consecutive `seq`-token chunks of `text`."""
    from transformers import AutoModelForCausalLM

    from lingraft.vocabulary.loading import load_tokenizer
    torch.manual_seed(0)
    tok = load_tokenizer(base)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    need = steps * batch * seq
    if len(ids) < need:
        raise SystemExit(f"fine-tune text has {len(ids)} tokens, {need} needed")
    chunks = torch.tensor(ids[:need]).view(steps, batch, seq)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    # The usual split: matrices decay; embeddings (so untouched rows stay exactly put) and norms do not.
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))
    warmup = max(2, steps // 8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    clock, losses = time.perf_counter(), []
    for step in range(steps):
        loss = model(input_ids=chunks[step], labels=chunks[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        print(f"step {step + 1}/{steps}: loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    model.save_pretrained(str(out), max_shard_size="200MB")
    for path in base.iterdir():      # tokenizer and chat template, as the base has them
        if path.is_file() and not (out / path.name).exists() and path.suffix in (".json", ".jinja", ".txt"):
            shutil.copy2(path, out / path.name)
    return {"steps": steps, "tokens": need, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": time.perf_counter() - clock}


def bpc(folder: Path, texts: list[str], max_length: int) -> float:
    from transformers import AutoModelForCausalLM

    from lingraft.evaluation.bpc import bits_per_character
    from lingraft.vocabulary.loading import load_tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return bits_per_character(model, load_tokenizer(folder), texts, max_length=max_length).bits_per_character


def pack_row(base: Path, tuned: Path, work: Path, beta: float, precision: str, held_out: list[str],
             max_length: int) -> dict:
    from lingraft.propagate.skillpack.apply import run_apply
    from lingraft.propagate.skillpack.config import SkillpackApplyConfig, SkillpackCreateConfig, SkillpackVerifyConfig
    from lingraft.propagate.skillpack.stage import run_create, run_verify
    top, rest = precision.split("/")
    pack, applied = work / f"pack-{beta}-{top}", work / f"applied-{beta}-{top}"
    clock = time.perf_counter()
    created = run_create(SkillpackCreateConfig(base=str(base), tuned=str(tuned), out=str(pack), energy=beta,
                                               top_precision=top, rest_precision=rest))
    create_s = time.perf_counter() - clock
    with contextlib.redirect_stdout(io.StringIO()):      # the per-module table: 200+ lines
        verified = run_verify(SkillpackVerifyConfig(pack=str(pack), base=str(base), tuned=str(tuned)))
    clock = time.perf_counter()
    run_apply(SkillpackApplyConfig(base=str(base), packs=[str(pack)], out=str(applied)))
    apply_s = time.perf_counter() - clock
    modules = list(json.loads((pack / "manifest.json").read_text())["outputs"]["modules"].values())
    ranks = [m["rank"] for m in modules if m["policy"] == "lowrank"]
    row = {"beta": beta, "precision": precision, "pack_bytes": created["pack_bytes"],
           "dense_delta_bytes": created["dense_delta_bytes"],
           "size_ratio": created["size_ratio"], "mean_rank": sum(ranks) / max(len(ranks), 1),
           "policies": created["policies"], "relative_error": verified["relative_error"],
           # a tied head's softmax gradient reaches every row, so the table delta is rarely sparse
           "table_bytes": sum(m["bytes"] for m in modules if m["policy"] in ("rows", "table")),
           "table_rows_changed": sum(m.get("rows", 0) for m in modules),
           "bpc": bpc(applied, held_out, max_length), "create_s": create_s, "apply_s": apply_s}
    shutil.rmtree(applied)
    shutil.rmtree(pack)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--betas", default="0.5,0.8,0.9,0.95,0.99")
    parser.add_argument("--precision", default="int8/int4", help="top/rest band precision")
    parser.add_argument("--also-float16-at", type=float, default=0.9,
                        help="one extra row with float16 factors at this β (0: none), to isolate quantization")
    parser.add_argument("--eval-chars", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=int, default=4, help="which RusLit work to fine-tune on (4: 865k chars)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lingraft.log import setup_logging
    from lingraft.demo_model import smollm2_path
    setup_logging()
    started = time.perf_counter()
    base = smollm2_path()
    # Training reads the first tokens of one work; the held-out text is the same work's text right
    # after the part training could reach, so a short fine-tune's gain shows on it.
    work_text = ruslit(args.work, 1)[0]
    train_chars = args.steps * args.batch * args.seq * 4         # >= 4 chars per token: more than needed
    held_out = [work_text[train_chars:train_chars + args.eval_chars]]
    train_text = work_text[:train_chars]
    if len(held_out[0]) < args.eval_chars:
        raise SystemExit(f"RusLit work {args.work} is too short for {train_chars} + {args.eval_chars} characters")
    work = Path(tempfile.mkdtemp(prefix="skillpack-bench-"))
    try:
        tuned = work / "tuned"
        tune = fine_tune(base, tuned, train_text, args.steps, args.batch, args.seq, args.lr)
        result = {"bench": "skillpack_smollm2", "model": "SmolLM2-135M-Instruct", "fine_tune": tune,
                  "held_out_chars": len(held_out[0]), "bpc_base": bpc(base, held_out, args.max_length),
                  "bpc_tuned": bpc(tuned, held_out, args.max_length), "rows": []}
        settings = [(float(b), args.precision) for b in args.betas.split(",")]
        if args.also_float16_at:
            settings.append((args.also_float16_at, "float16/float16"))
        for beta, precision in settings:
            row = pack_row(base, tuned, work, beta, precision, held_out, args.max_length)
            gain = result["bpc_base"] - result["bpc_tuned"]
            row["gain_kept"] = (result["bpc_base"] - row["bpc"]) / gain if gain else None
            result["rows"].append(row)
            print(f"β={beta} {precision}: {row['pack_bytes'] / 1e6:.2f} MB ({row['size_ratio']:.4f} of dense), "
                  f"rel. error {row['relative_error']:.3f}, bpc {row['bpc']:.4f} (tuned {result['bpc_tuned']:.4f}, "
                  f"base {result['bpc_base']:.4f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result))


if __name__ == "__main__":
    main()

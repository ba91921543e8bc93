"""Training step on CPU, 2 ranks, DeepSpeed ZeRO-2: embeddings-only vs full, optimizer state, HF Trainer.

In one torchrun launch (2 ranks, gloo, one thread each) and on random Llama models:
  (a) median step time of `trainable=embeddings` against `trainable=full`, beside the ratio
      the FLOP count predicts (train/flops.py), on two shapes:
        - "transformer": 8 blocks, hidden 384, vocabulary 4,000, where the frozen blocks dominate
          the cost (the case the issue's 0.71-0.81 prediction describes);
        - "issue": hidden 256, 4 blocks, vocabulary 32,000 (the issue's example), where the LM
          head dominates and FLOPs already predict about 0.91;
  (b) optimizer-state bytes of every rank (from the run's manifest) against a single-process
      AdamW over the same trainable tensors, and every rank's peak RSS;
  (c) tokens/s of our loop against the usual route: HF `Trainer` with the same filled DeepSpeed
      config, the same frozen parameters (only the tables train), batch, data, optimizer
      implementation (unfused torch AdamW) and schedule (cosine down to lr * min_lr_ratio).
      HF's route has no document mask, so ours is measured with the mask (our default) and
      without it (the same attention work).
The first --warmup steps of every run are not timed; a step's time is the median of the rest,
taken between step boundaries the same way on both routes, as wall time and as the rank's CPU
time (the figure that other jobs on a shared machine do not inflate).

    .venv/bin/python bench/train_step.py [--steps 10] [--warmup 2] [--seq 256]

The last line is JSON: per shape {"embeddings_vs_full"(_cpu), "predicted", "opt_bytes_ratio", ...},
and "vs_hf_trainer"(_cpu): our tokens/s over HF Trainer's (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHAPES = {
    "transformer": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8,
                    "num_attention_heads": 6, "vocab_size": 4000},
    "issue": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 4, "vocab_size": 32000},
}
# (shape, trainable, doc_mask). HF_TRAINER is the usual route, embeddings-only, run between our
# two embeddings-only runs so that drifting machine load touches both sides alike.
HF_TRAINER = "hf_trainer"
RANKS = 2
RUNS = [("transformer", "embeddings", True), ("transformer", HF_TRAINER, False), ("transformer", "embeddings", False),
        ("transformer", "full", True), ("issue", "embeddings", True), ("issue", "full", True)]


# -- timing and data ---------------------------------------------------------------------------

class StepClock:
    """Wall and CPU time at each step boundary, taken the same way for our loop and HF's.

    CPU seconds are the contention-robust figure on a shared machine: a rank waiting in a
    gloo collective sleeps, so its CPU time counts only its own work, not the other jobs'.
    """

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def median_step(self, skip: int) -> tuple[float, float]:
        """Median (wall, cpu) seconds between consecutive marks, after the first `skip`."""
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])][skip:]
        return statistics.median(w for w, _ in steps), statistics.median(c for _, c in steps)


class RandomPacked:
    """Random packed samples (documents of random length), disjoint per rank, resumable.

    With a clock, marks the start of every optimizer step (its first sample is fetched).
    """

    def __init__(self, vocab: int, seq: int, rank: int, count: int = 4096, clock: StepClock | None = None,
                 samples_per_step: int = 1) -> None:
        import torch
        gen = torch.Generator().manual_seed(1000 + rank)
        self.tokens = torch.randint(0, vocab, (count, seq + 1), generator=gen)
        self.doc_lengths = torch.randint(seq // 8, seq, (count,), generator=gen)
        self.position = 0
        self.clock, self.samples_per_step = clock, samples_per_step

    def sample(self, i: int) -> dict:
        import torch
        seq = self.tokens.shape[1] - 1
        positions = torch.arange(seq) % int(self.doc_lengths[i])      # documents back to back
        return {"input_ids": self.tokens[i, :-1], "labels": self.tokens[i, 1:], "position_ids": positions}

    def __iter__(self):
        while self.position < len(self.tokens):
            if self.clock is not None and self.position % self.samples_per_step == 0:
                self.clock.mark()
            self.position += 1
            yield self.sample(self.position - 1)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


# -- worker (one per rank, under torchrun) ---------------------------------------------------------

def _config(args, workdir: Path, shape: str, trainable: str, doc_mask: bool):
    from lingraft.config import build_config
    from lingraft.train.config import TrainConfig
    return build_config(TrainConfig, overrides={
        "model": str(workdir / shape), "data": "in-memory",
        "out_dir": str(workdir / f"run-{shape}-{trainable}-{doc_mask}"),
        "backend": "deepspeed", "zero_stage": 2, "trainable": trainable, "doc_mask": doc_mask, "device": "cpu",
        "max_steps": args.steps, "micro_batch_size": args.micro_batch, "grad_accum_steps": args.accum,
        "optim": {"warmup_steps": 2}, "checkpoint": {"every_steps": 10**6, "resume": False},
        "log": {"tensorboard": False, "plot": False}, "launch": {"nproc_per_node": RANKS}})


def _peak_rss_per_rank() -> list[float]:
    import torch

    from lingraft.memory import peak_rss_bytes
    from lingraft.train.dist import DistInfo
    from lingraft.train.loop import per_rank
    dist = DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), 0)
    return [v / 2**30 for v in per_rank(peak_rss_bytes(), dist, torch.device("cpu"))]


def _single_process_optimizer_bytes(cfg) -> int:
    """What one process's AdamW holds for the same trainable tensors (the unsharded figure)."""
    import torch

    from lingraft.train.model_setup import build_model, resolve_runtime
    from lingraft.train.optim import build_optimizer, optimizer_state_bytes
    model, _ = build_model(cfg, resolve_runtime(cfg))
    optimizer = build_optimizer(model, cfg.optim)
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    optimizer.step()                      # AdamW allocates its state on the first step
    return optimizer_state_bytes(optimizer)


def _hf_trainer_step(args, cfg) -> tuple[float, float]:
    """The usual route: transformers.Trainer + the same DeepSpeed config, only the tables trainable."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from lingraft.train.dist import skip_deepspeed_shm_build
    from lingraft.train.ds_config import fill_ds_config
    from lingraft.train.model_setup import apply_trainable
    skip_deepspeed_shm_build()
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    apply_trainable(model, cfg)
    rank = torch.distributed.get_rank()
    data = RandomPacked(model.config.vocab_size, args.seq, rank)
    dataset = [{"input_ids": data.tokens[i, :-1], "labels": data.tokens[i, :-1]} for i in range(len(data.tokens))]
    clock = StepClock()

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.mark()

    # Without CUDA, accelerate sets DeepSpeed up as a 1-process run unless the state is configured
    # up front: a DeepSpeed state over the existing gloo group, handed over with use_configured_state.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]
    training_args = TrainingArguments(
        output_dir=str(Path(cfg.out_dir) / "hf"), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps, max_steps=cfg.max_steps, learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps, warmup_steps=cfg.optim.warmup_steps, max_grad_norm=cfg.optim.grad_clip,
        # Like for like: our unfused torch AdamW (HF defaults to the fused one) and our cosine's
        # floor at lr * min_lr_ratio (HF's plain cosine decays to 0).
        optim="adamw_torch", lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.optim.min_lr_ratio},
        save_strategy="no", logging_steps=10**6, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        accelerator_config={"use_configured_state": True},
        deepspeed=fill_ds_config(cfg, torch.distributed.get_world_size(), bf16=False,
                                 hidden_size=model.config.hidden_size))
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=[StepEnds()])
    trainer.train()
    return clock.median_step(skip=max(args.warmup - 1, 0))   # marks at step ends: step 1 has none


def worker(args) -> None:
    import torch

    from lingraft.log import setup_logging
    from lingraft.train.loop import train
    setup_logging()
    workdir = Path(args.workdir)
    results: dict = {"runs": []}
    tokens_per_step = args.micro_batch * args.accum * args.seq * RANKS
    for shape, trainable, doc_mask in RUNS:
        run = {"shape": shape, "trainable": trainable, "doc_mask": doc_mask}
        results["runs"].append(run)
        if trainable == HF_TRAINER:
            run["step_s"], run["cpu_s"] = _hf_trainer_step(args, _config(args, workdir, shape, "embeddings", doc_mask))
            run["tokens_per_s"] = tokens_per_step / run["step_s"]
            continue
        cfg = _config(args, workdir, shape, trainable, doc_mask)
        clock = StepClock()
        vocab = SHAPES[shape]["vocab_size"]
        train(cfg, lambda c, d, vocab=vocab, clock=clock: RandomPacked(vocab, args.seq, d.rank, clock=clock,
                                                                       samples_per_step=args.micro_batch * args.accum))
        run["step_s"], run["cpu_s"] = clock.median_step(skip=args.warmup)   # marks at step starts
        run["tokens_per_s"] = tokens_per_step / run["step_s"]
        manifest = Path(cfg.out_dir) / "manifest.json"
        if manifest.is_file():                                                    # rank 0 writes it
            run["opt_bytes_per_rank"] = json.loads(manifest.read_text())["metrics"]["optimizer_state_bytes_per_rank"]
        run["peak_rss_gib_per_rank"] = _peak_rss_per_rank()
        if trainable == "embeddings" and doc_mask and torch.distributed.get_rank() == 0:
            run["opt_bytes_single_process"] = _single_process_optimizer_bytes(cfg)
    if torch.distributed.get_rank() == 0:
        (workdir / "results.json").write_text(json.dumps(results))


# -- driver ------------------------------------------------------------------------------------

def _make_models(workdir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    for name, dims in SHAPES.items():
        torch.manual_seed(0)
        config = LlamaConfig(**dims, num_key_value_heads=dims["num_attention_heads"], max_position_embeddings=4096,
                             tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(workdir / name)


def _predicted_ratio(shape: str, seq: int) -> float:
    from transformers import AutoConfig

    from lingraft.train.flops import GradPlan, ModelShape, training_flops_per_token
    from_hf = ModelShape.from_hf_config(AutoConfig.for_model("llama", **SHAPES[shape]))
    keys = seq / 4       # random documents of seq/8..seq tokens: about a quarter of the sample attended
    flops = {mode: training_flops_per_token(from_hf, GradPlan.for_mode(mode, from_hf), keys)
             for mode in ("embeddings", "full")}
    return flops["embeddings"] / flops["full"]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every run")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="lingraft-bench-") as tmp:
        workdir = Path(tmp)
        _make_models(workdir)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "LINGRAFT_NO_PROGRESS": "1",
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        flags = [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--seq={args.seq}",
                 f"--micro-batch={args.micro_batch}", f"--accum={args.accum}"]
        subprocess.run(["torchrun", "--standalone", "--nproc_per_node", str(RANKS), __file__, "--worker",
                        f"--workdir={workdir}", *flags], env=env, check=True, cwd=REPO)
        results = json.loads((workdir / "results.json").read_text())
    runs = {(r["shape"], r["trainable"], r["doc_mask"]): r for r in results["runs"]}
    print(f"\nZeRO-2, {RANKS} ranks x 1 thread, micro-batch {args.micro_batch} x accum {args.accum} x seq {args.seq}, "
          f"{args.steps} steps ({args.warmup} untimed); load average before {load_before}, after {_load()}")
    summary: dict = {}
    for shape in SHAPES:
        emb, full = runs[(shape, "embeddings", True)], runs[(shape, "full", True)]
        single, per_rank = emb["opt_bytes_single_process"], emb["opt_bytes_per_rank"]
        summary[shape] = {
            "embeddings_vs_full": round(emb["step_s"] / full["step_s"], 3),
            "embeddings_vs_full_cpu": round(emb["cpu_s"] / full["cpu_s"], 3),
            "predicted": round(_predicted_ratio(shape, args.seq), 3),
            "step_s": {"embeddings": round(emb["step_s"], 3), "full": round(full["step_s"], 3)},
            "cpu_s": {"embeddings": round(emb["cpu_s"], 3), "full": round(full["cpu_s"], 3)},
            "opt_bytes_per_rank": per_rank, "opt_bytes_single_process": single,
            "opt_bytes_ratio": round(max(per_rank) / single, 3),
            "peak_rss_gib_per_rank": [round(v, 2) for v in full["peak_rss_gib_per_rank"]]}
        print(f"{shape:12s} {summary[shape]}")
    main_shape = RUNS[0][0]
    hf = runs[(main_shape, HF_TRAINER, False)]
    masked, unmasked = runs[(main_shape, "embeddings", True)], runs[(main_shape, "embeddings", False)]
    summary["vs_hf_trainer"] = round(hf["step_s"] / unmasked["step_s"], 3)        # tokens/s ratio, same attention
    summary["vs_hf_trainer_cpu"] = round(hf["cpu_s"] / unmasked["cpu_s"], 3)
    summary["vs_hf_trainer_doc_mask"] = round(hf["step_s"] / masked["step_s"], 3)
    summary["tokens_per_s"] = {"ours_doc_mask": round(masked["tokens_per_s"]),
                               "ours_no_mask": round(unmasked["tokens_per_s"]), "hf_trainer": round(hf["tokens_per_s"])}
    summary["cpu_s_per_step"] = {"ours_doc_mask": round(masked["cpu_s"], 3),
                                 "ours_no_mask": round(unmasked["cpu_s"], 3), "hf_trainer": round(hf["cpu_s"], 3)}
    summary["load_average"] = [load_before, _load()]
    print(json.dumps(summary))

if __name__ == "__main__":
    main()

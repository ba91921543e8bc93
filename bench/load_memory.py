"""Host memory of loading a checkpoint for training, per rank, and what each rank then holds.

A random Llama-shaped checkpoint (bf16 safetensors, several shards) is loaded by 2 CPU
ranks as `lingraft train` would: FSDP2 under torchrun and ZeRO-3 under the deepspeed
launcher, trainable=embeddings, precision=bf16. For each engine:
- rss_per_rank_over_checkpoint: the largest rank's peak RSS once model and engine are
  ready to train, minus the peak RSS of an idle process that imported the same libraries,
  over the checkpoint's bytes;
- held: the bytes a rank holds per kind (train/rank_bytes.py), ready and after the steps;
- collectives_per_step: calls and bytes of every torch.distributed collective during one
  optimizer step after a warm-up step (--steps > 0).
--before also measures the load this change replaced: every rank `from_pretrained` of the
whole checkpoint, then FSDP2 sharding every block over all ranks in fp32 (the wrap of
commit 3788e02), or ZeRO-3 partitioning a fully loaded bf16 module.

    .venv/bin/python bench/load_memory.py [--size 1b|small] [--steps 0] [--before] [--fsdp-placement node]

The last line is JSON: {"fsdp": {"rss_per_rank_over_checkpoint": x, ...}, "deepspeed_zero3": {...}}.
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
# ~1B: TinyLlama's shape (hidden 2048, MLP 5632, GQA 32/4 heads) with 20 blocks and a 32k vocabulary.
SHAPES = {"1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000),
          "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=32000)}
SHARD_BYTES = 400 << 20
# What a rank of each engine has imported once it is ready: the idle baseline imports the same.
IMPORTS = ("import torch, transformers, deepspeed, safetensors, accelerate\n"
           "from transformers import LlamaForCausalLM\n"
           "import lingraft.train.loop, lingraft.train.sharded_load, lingraft.train.backends.fsdp_backend\n"
           "import lingraft.train.backends.deepspeed_backend\n")
ENGINE_IMPORTS = {"fsdp": "from torch.distributed.fsdp import fully_shard\nfrom torch.distributed.tensor import DTensor\n",
                  "deepspeed_zero3": "import deepspeed.runtime.engine, deepspeed.runtime.zero.stage3\n"}
COLLECTIVES = ("all_gather_single", "reduce_scatter_single", "all_gather_into_tensor", "reduce_scatter_tensor",
               "all_reduce", "all_gather", "broadcast", "reduce_scatter", "all_to_all_single", "_all_gather_base",
               "_reduce_scatter_base")


def peak_rss() -> int:
    from lingraft.memory import peak_rss_bytes
    return peak_rss_bytes()


# -- the checkpoint ---------------------------------------------------------------------------
def make_checkpoint(folder: Path, size: str) -> int:
    """Random bf16 weights in shards of SHARD_BYTES, written tensor by tensor; returns total bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    if (folder / "model.safetensors.index.json").is_file():
        return json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    config = LlamaConfig(**SHAPES[size], max_position_embeddings=2048, tie_word_embeddings=False, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, shard_bytes, total, index = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, index
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard, shard_bytes, index = {}, 0, index + 1

    for name, shape in shapes.items():
        tensor = (torch.ones(shape) if name.endswith("norm.weight")
                  else torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if shard and shard_bytes + tensor.nbytes > SHARD_BYTES:
            flush()
        shard[name] = tensor
        shard_bytes += tensor.nbytes
        total += tensor.nbytes
    flush()
    config.save_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def idle_peak_rss(engine: str) -> int:
    code = IMPORTS + ENGINE_IMPORTS[engine] + "from lingraft.memory import peak_rss_bytes\nprint(peak_rss_bytes())\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return int(done.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "LINGRAFT_NO_PROGRESS": "1",
            "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


# -- one rank ----------------------------------------------------------------------------------
class CollectiveCounter:
    """Counts torch.distributed collectives (calls and first-tensor bytes) while `on`. Installed
    before any engine starts, so DeepSpeed's communication layer binds the counting wrappers."""

    def __init__(self) -> None:
        import torch.distributed as dist
        self.on, self.inside, self.counts = False, False, {}
        for name in COLLECTIVES:
            for module in (dist, dist.distributed_c10d):
                if hasattr(module, name):
                    setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, fn):
        import torch

        def counted(*args, **kwargs):
            if self.on and not self.inside:      # one collective may call another: count the outer one
                first = next((a for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
                calls, nbytes = self.counts.get(name, (0, 0))
                size = first.numel() * first.element_size() if first is not None else 0
                self.counts[name] = (calls + 1, nbytes + size)
            self.inside, outer = True, self.inside
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside = outer
        counted.__wrapped__ = fn
        return counted


def _legacy_fsdp_wrap(backend, model):
    """The FSDP2 wrap before issue 12.4: every block a group over all ranks, weights in fp32."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from lingraft.train.model_parts import decoder_blocks
    mesh = init_device_mesh(backend.runtime.device.type, (backend.dist.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=backend.runtime.dtype, reduce_dtype=torch.float32)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def worker(config_path: Path, result: Path, before: bool, steps: int) -> None:
    counter = CollectiveCounter()
    import torch

    from lingraft.config import build_config
    from lingraft.train.backends import build_backend
    from lingraft.train.config import TrainConfig
    from lingraft.train.dist import exit_rank, init_distributed
    from lingraft.train.model_setup import apply_trainable, build_model, load_model, resolve_runtime, weights_dtype
    from lingraft.train.rank_bytes import held_bytes
    cfg = build_config(TrainConfig, config_path)
    dist = init_distributed(600, use_cuda=False, engine=cfg.backend)
    runtime = resolve_runtime(cfg, dist.local_rank)
    start = time.perf_counter()
    if before:
        model = load_model(cfg.model, runtime, weights_dtype(cfg, runtime))
        apply_trainable(model, cfg)
        if cfg.backend == "fsdp":
            from lingraft.train.backends import fsdp_backend
            fsdp_backend.FSDPBackend.wrap = _legacy_fsdp_wrap
    else:
        model, _ = build_model(cfg, runtime)
    model_peak = peak_rss()          # before the engine (FSDP2 fills its shards while wrapping)
    backend = build_backend(cfg, model, runtime, dist)
    out = {"rank": dist.rank, "load_s": time.perf_counter() - start, "model_peak_rss": model_peak,
           "ready_peak_rss": peak_rss(),
           "held_ready": held_bytes(backend.model, backend.optimizer)}
    vocab = int(model.config.vocab_size)
    batch = {"input_ids": torch.randint(0, vocab, (1, 64)), "labels": torch.randint(0, vocab, (1, 64)),
             "position_ids": torch.arange(64).unsqueeze(0)}
    for step in range(steps + 1 if steps else 0):
        counter.on = step == steps            # the first step warms up (lazy init, traces)
        backend.train_step([batch])
    counter.on = False
    if steps:
        out.update(collectives_per_step={k: {"calls": c, "bytes": b} for k, (c, b) in sorted(counter.counts.items())},
                   held_after_steps=held_bytes(backend.model, backend.optimizer), peak_rss_after_steps=peak_rss())
    result.with_name(f"{result.stem}_rank{dist.rank}.json").write_text(json.dumps(out))
    exit_rank(0)


# -- the driver --------------------------------------------------------------------------------
def _config(workdir: Path, model: Path, engine: str, placement: str) -> Path:
    import yaml
    cfg = {"model": str(model), "data": "unused", "out_dir": str(workdir / "run"), "max_steps": 10,
           "trainable": "embeddings", "precision": "bf16", "device": "cpu", "micro_batch_size": 1,
           "log": {"tensorboard": False, "plot": False}, "frozen_body": {"placement": placement},
           "launch": {"nproc_per_node": 2, "dist_timeout_s": 600},
           **({"backend": "fsdp"} if engine == "fsdp" else {"backend": "deepspeed", "zero_stage": 3})}
    path = workdir / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(workdir: Path, model: Path, engine: str, placement: str, before: bool, steps: int) -> list[dict]:
    import socket
    config = _config(workdir, model, engine, placement)
    result = workdir / f"{engine}{'_before' if before else ''}.json"
    if engine == "fsdp":
        launcher = ["torchrun", "--standalone", "--nproc_per_node", "2"]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(port)]
    args = [str(Path(__file__).resolve()), "--worker", str(config), "--result", str(result), "--steps", str(steps)]
    done = subprocess.run([*launcher, *args, *(["--before"] if before else [])], cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine}: launcher exited {done.returncode}\n{done.stderr[-3000:]}")
    return [json.loads(result.with_name(f"{result.stem}_rank{r}.json").read_text()) for r in (0, 1)]


def summary(ranks: list[dict], idle: int, checkpoint_bytes: int) -> dict:
    worst = max(ranks, key=lambda r: r["ready_peak_rss"])
    out = {"rss_per_rank_over_checkpoint": round((worst["ready_peak_rss"] - idle) / checkpoint_bytes, 3),
           "ready_peak_rss_gib": [round(r["ready_peak_rss"] / 2**30, 2) for r in ranks],
           "model_peak_over_checkpoint": round((worst["model_peak_rss"] - idle) / checkpoint_bytes, 3),
           "load_s": round(max(r["load_s"] for r in ranks), 1), "held_ready": worst["held_ready"]}
    if "held_after_steps" in worst:
        out.update(held_after_steps=worst["held_after_steps"], collectives_per_step=worst["collectives_per_step"],
                   rss_after_steps_over_checkpoint=round((worst["peak_rss_after_steps"] - idle) / checkpoint_bytes, 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps after the load (0: load only)")
    parser.add_argument("--before", action="store_true", help="also measure the load this change replaced")
    parser.add_argument("--fsdp-placement", choices=["node", "replicate"], default="node")
    parser.add_argument("--zero3-placement", choices=["node", "replicate"], default="node")
    parser.add_argument("--engines", default="fsdp,deepspeed_zero3", help="comma-separated: fsdp, deepspeed_zero3")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lingraft_load_memory")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)    # added by the deepspeed launcher
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.result, args.before, args.steps)
        return
    workdir = args.workdir / args.size
    model = workdir / "model"
    checkpoint_bytes = make_checkpoint(model, args.size)
    report = {"size": args.size, "checkpoint_gib": round(checkpoint_bytes / 2**30, 2)}
    placements = {"fsdp": args.fsdp_placement, "deepspeed_zero3": args.zero3_placement}
    for engine in args.engines.split(","):
        placement = placements[engine]
        idle = idle_peak_rss(engine)
        report[engine] = summary(measure(workdir, model, engine, placement, False, args.steps), idle, checkpoint_bytes)
        report[engine].update(placement=placement, idle_peak_rss_gib=round(idle / 2**30, 2))
        if args.before:
            report[engine]["before"] = summary(measure(workdir, model, engine, placement, True, args.steps), idle,
                                               checkpoint_bytes)
        print(json.dumps({engine: report[engine]}), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Load a model the way training does, under a launcher, and report what each rank got.

    torchrun --standalone --nproc_per_node 2 tests/integration/load_check.py a.yaml b.yaml
    deepspeed --num_gpus 2 tests/integration/load_check.py a.yaml

For each config: build the model and engine (train/model_setup.py, train/backends), gather
every parameter and compare it with `from_pretrained` of the same folder (cast to the dtype
the rank holds it in), count the bytes each rank holds (train/rank_bytes.py), then take two
optimizer steps on in-memory samples and count them again. Each rank writes <out_dir>/load_rank<r>.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _full(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    if isinstance(param, DTensor):
        return param.full_tensor()
    if hasattr(param, "ds_tensor"):
        import deepspeed
        with deepspeed.zero.GatheredParameters([param]):
            return param.data.clone()
    return param.detach()


def _expected(reference: dict[str, torch.Tensor], name: str, split) -> torch.Tensor:
    """The base tensor a parameter (or split part) must equal."""
    table, _, part = name.rpartition(".")
    if part in ("new", "frozen") and split is not None:
        weight = reference.get(f"{table}.weight", reference["model.embed_tokens.weight"])   # tied head
        return weight[split.new_ids if part == "new" else split.old_ids]
    return reference[name]


def check(path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from lingraft.config import build_config
    from lingraft.train.backends import build_backend
    from lingraft.train.config import TrainConfig
    from lingraft.train.dist import init_distributed
    from lingraft.train.model_setup import build_model, resolve_runtime
    from lingraft.train.rank_bytes import held_bytes
    from tests.integration.train_tiny import packed_samples
    cfg = build_config(TrainConfig, path)
    dist = init_distributed(120, use_cuda=False, engine=cfg.backend)
    runtime = resolve_runtime(cfg, dist.local_rank)
    torch.manual_seed(cfg.seed)
    model, split = build_model(cfg, runtime)
    backend = build_backend(cfg, model, runtime, dist)
    held = held_bytes(backend.model, backend.optimizer)
    reference = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).state_dict()
    mismatched, dtypes = [], {}
    tensors = [*backend.model.named_parameters(), *((n, b) for n, b in backend.model.named_buffers()
                                                     if n.endswith(".frozen"))]
    for name, tensor in tensors:
        full = _full(tensor)
        dtypes[name] = str(full.dtype).removeprefix("torch.")
        if not torch.equal(full.cpu(), _expected(reference, name, split).to(full.dtype)):
            mismatched.append(name)
    samples = packed_samples(8, seed=dist.rank)
    losses = []
    for step in range(2):
        batch = {k: torch.stack([s[k] for s in samples[2 * step:2 * step + 2]]) for k in samples[0]}
        losses.append(backend.train_step([batch]).loss)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load_rank{dist.rank}.json").write_text(json.dumps(
        {"mismatched": mismatched, "dtypes": dtypes, "held": held, "losses": losses,
         "held_after_steps": held_bytes(backend.model, backend.optimizer)}))


if __name__ == "__main__":
    from lingraft.train.dist import exit_rank
    for arg in (a for a in sys.argv[1:] if not a.startswith("--local_rank")):
        check(Path(arg))
    exit_rank(0)

"""Tiny Llama checkpoints and in-memory packed samples for the trainer tests."""
from __future__ import annotations

import time
from pathlib import Path

import torch

VOCAB = 96
SEQ = 32
# Scripts that a launcher starts as files, several trainings (or load checks) per launch.
TRAIN_RUNS = str(Path(__file__).with_name("train_runs.py"))
LOAD_CHECK = str(Path(__file__).with_name("load_check.py"))


def make_tiny_llama(path: Path, vocab: int = VOCAB, tied: bool = False, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path


def packed_samples(n: int, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Samples shaped like the packed dataset's: documents of random length back to back."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (seq + 1,), generator=gen)
        position_ids = torch.empty(seq, dtype=torch.int64)
        start = 0
        while start < seq:
            length = int(torch.randint(4, seq, (1,), generator=gen))
            position_ids[start:start + length] = torch.arange(min(length, seq - start))
            start += length
        samples.append({"input_ids": tokens[:-1], "labels": tokens[1:], "position_ids": position_ids})
    return samples


class ListSource:
    """A rank's disjoint slice of in-memory samples, with a resumable position."""

    def __init__(self, samples, rank: int = 0, world_size: int = 1) -> None:
        self.samples = samples[rank::world_size]
        self.position = 0

    def __iter__(self):
        while self.position < len(self.samples):
            self.position += 1
            yield self.samples[self.position - 1]

    def set_epoch(self, epoch: int) -> None:
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state) -> None:
        self.position = state["position"]


def tiny_config(model: Path, out_dir: Path, **overrides):
    from lingraft.config import build_config
    from lingraft.train.config import TrainConfig
    base = {"model": str(model), "data": "in-memory", "out_dir": str(out_dir), "backend": "local",
            "max_steps": 8, "micro_batch_size": 2, "grad_accum_steps": 2,
            "optim": {"warmup_steps": 2, "lr": 3e-3}, "checkpoint": {"every_steps": 3, "keep_last": 2},
            "log": {"tensorboard": False, "plot": False}}
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build_config(TrainConfig, overrides=base)


def in_memory_source(cfg, dist):
    return ListSource(packed_samples(200), rank=dist.rank, world_size=dist.world_size)


def masked_samples(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`packed_samples` whose first 0..SEQ-1 labels (a random number per sample) are no target."""
    gen = torch.Generator().manual_seed(seed + 1)
    samples = packed_samples(n, seed=seed)
    for sample in samples:
        sample["labels"] = sample["labels"].clone()
        sample["labels"][:int(torch.randint(0, SEQ, (1,), generator=gen))] = -100
    return samples


def masked_source(cfg, dist):
    return ListSource(masked_samples(64), rank=dist.rank, world_size=dist.world_size)


class StallingSource(ListSource):
    """Blocks forever once `stall_at` samples were read: a run stuck mid-way, waiting to be killed."""

    def __init__(self, samples, stall_at: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(samples, rank, world_size)
        self.stall_at = stall_at

    def __iter__(self):
        for sample in super().__iter__():
            while self.position > self.stall_at:
                time.sleep(1)
            yield sample


if __name__ == "__main__":   # python -m tests.integration.train_tiny MODEL OUT_DIR '{"dotted.key": value}' STALL_AT_SAMPLE
    import json
    import sys

    from lingraft.log import setup_logging
    from lingraft.train.loop import train
    setup_logging()
    stall_at = int(sys.argv[4])
    train(tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), **json.loads(sys.argv[3])),
          lambda cfg, dist: StallingSource(packed_samples(200), stall_at, dist.rank, dist.world_size))


def write_packed_folder(folder: Path, vocab: int = VOCAB, docs: int = 120, seq: int = SEQ, seed: int = 0,
                        masked: bool = False) -> Path:
    """A packed folder written through the packed-format API.

    Tokens follow a Zipf-like distribution, so the data has something to learn (a uniform
    stream's loss cannot go below ln(vocab)) and "the loss decreases" is a real check.
    `masked`: each document's first tokens (a random share, like an SFT prompt) are no target,
    so samples hold different numbers of targets.
    """
    import numpy as np

    from lingraft.data_prep.packed_format import ShardBuilder, packed_outputs, shard_name, token_dtype
    from lingraft.manifest import new_manifest
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab)
    zipf = 1.0 / np.arange(1, vocab)
    order = rng.permutation(vocab - 1)          # frequent tokens spread over old and new rows
    builder = ShardBuilder(dtype, eos_id=vocab - 1)
    for _ in range(docs):
        length = int(rng.integers(4, 2 * seq))
        mask = (np.arange(length) >= rng.integers(0, length)).astype(np.uint8) if masked else None
        builder.add(order[rng.choice(vocab - 1, size=length, p=zipf / zipf.sum())], mask=mask, source="synthetic")
    record = builder.write(folder, shard_name(0), seq, "stream")
    manifest = new_manifest("test.pack", {})
    manifest.outputs = packed_outputs([record], tokenizer={"spec": "synthetic", "fingerprint": "0" * 64,
                                                           "vocab_size": vocab},
                                      dtype=dtype.name, seq_len=seq, sample_start="stream", bos_id=None,
                                      eos_id=vocab - 1)
    manifest.write(folder)
    return folder


# -- multi-process runs (TRAIN_RUNS under deepspeed, torchrun or mpirun) ------------------------------

def dist_run_config(model: Path, data: Path, out_dir: Path, **overrides) -> dict:
    """A 2-rank CPU training config as YAML-ready dict; dotted keys override nested ones."""
    cfg = {"model": str(model), "data": str(data), "out_dir": str(out_dir), "max_steps": 4,
           "micro_batch_size": 2, "grad_accum_steps": 2, "device": "cpu",
           "optim": {"warmup_steps": 2, "lr": 0.01}, "checkpoint": {"every_steps": 2},
           "log": {"tensorboard": False, "plot": False},
           "launch": {"nproc_per_node": 2, "dist_timeout_s": 120}}
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def accumulation_pair(model: Path, masked_data: Path, folder: Path, name: str = "acc", **overrides) -> dict[str, dict]:
    """Two runs of one objective on data with masked labels: 2 samples x 1 micro-batch per
    step, and 1 sample x 2 accumulation steps (`assert_same_steps(folder, name)` compares them)."""
    common = {"trainable": "full", "max_steps": 2, **overrides}
    return {f"{name}_2x1": dist_run_config(model, masked_data, folder / f"{name}_2x1", micro_batch_size=2,
                                           grad_accum_steps=1, **common),
            f"{name}_1x2": dist_run_config(model, masked_data, folder / f"{name}_1x2", micro_batch_size=1,
                                           grad_accum_steps=2, **common)}


def assert_same_steps(folder: Path, name: str = "acc") -> None:
    """The 2-rank runs of `accumulation_pair` logged the same losses and gradient norms, and so
    does one local process reading all 4 samples of each step at once (run here, in-process):
    the global order gives rank r samples r, r+2, ..., so both read the same 4 per step."""
    import pytest
    import yaml

    from lingraft.config import build_config
    from lingraft.train.config import TrainConfig
    from lingraft.train.loop import train
    from lingraft.train.metrics_log import read_metrics
    local = yaml.safe_load((folder / f"{name}_2x1.yaml").read_text())
    local.update(backend="local", micro_batch_size=4, out_dir=str(folder / f"{name}_local"))
    local.pop("zero_stage", None)
    local["launch"]["nproc_per_node"] = 1
    train(build_config(TrainConfig, overrides=local))
    runs = [read_metrics(folder / f"{name}_{run}") for run in ("2x1", "1x2", "local")]
    assert [len(rows) for rows in runs] == [2, 2, 2]
    for first, *others in zip(*runs):
        for other in others:
            assert other["loss"] == pytest.approx(first["loss"], rel=1e-5), runs
            assert other["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-4), runs


def write_configs(folder: Path, configs: dict[str, dict]) -> list[str]:
    """One YAML file per named config; returns their paths in order."""
    import yaml
    paths = []
    for name, cfg in configs.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(str(path))
    return paths


def launch_env(**extra: str) -> dict[str, str]:
    """Environment for launched CPU ranks: the venv's launchers on PATH, one thread per rank."""
    import os

    from tests.conftest import REPO
    return {**os.environ, "LINGRAFT_NO_PROGRESS": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO), "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", **extra}


def run_launcher(cmd: list[str], timeout: int = 900, **env: str) -> None:
    import subprocess

    from tests.conftest import REPO
    done = subprocess.run(cmd, cwd=REPO, env=launch_env(**env), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd[:3])}... exited {done.returncode}:\n{done.stderr[-4000:]}"


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses(out_dir: Path) -> list[tuple[int, float]]:
    from lingraft.train.metrics_log import read_metrics
    return [(row["step"], row["loss"]) for row in read_metrics(out_dir)]


def changed_rows(base: torch.Tensor, out: torch.Tensor) -> set[int]:
    return set((base != out).any(dim=1).nonzero().flatten().tolist())


def export_and_compare(run_dir: Path, model_dir: Path, out: Path) -> dict[str, set[int] | bool]:
    """`lingraft export` a run; per tensor of the base model: rows that changed (tables) or changed at all."""
    from safetensors.torch import load_file

    from lingraft.cli import main as lingraft
    assert lingraft(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    base, exported = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == exported.keys()
    return {key: changed_rows(base[key], exported[key]) if key in TABLES else not torch.equal(base[key], exported[key])
            for key in base}


TABLES = {"model.embed_tokens.weight", "lm_head.weight"}

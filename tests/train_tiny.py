"""Tiny Llama checkpoints and in-memory packed samples for the trainer tests."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 96
SEQ = 32


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
    from train.config import TrainConfig
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


if __name__ == "__main__":   # python -m tests.train_tiny MODEL OUT_DIR '{"dotted.key": value}'
    import json
    import sys

    from lingraft.log import setup_logging
    from train.loop import train
    setup_logging()
    train(tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), **json.loads(sys.argv[3])), in_memory_source)


def write_packed_folder(folder: Path, vocab: int = VOCAB, docs: int = 120, seq: int = SEQ, seed: int = 0) -> Path:
    """A packed folder of random documents written through the packed-format API."""
    import numpy as np

    from data_prep.packed_format import ShardBuilder, packed_outputs, shard_name, token_dtype
    from lingraft.manifest import new_manifest
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab)
    builder = ShardBuilder(dtype, eos_id=vocab - 1)
    for _ in range(docs):
        builder.add(rng.integers(0, vocab - 1, size=int(rng.integers(4, 2 * seq))), source="synthetic")
    record = builder.write(folder, shard_name(0), seq, "stream")
    manifest = new_manifest("test.pack", {})
    manifest.outputs = packed_outputs([record], tokenizer={"spec": "synthetic", "fingerprint": "0" * 64,
                                                           "vocab_size": vocab},
                                      dtype=dtype.name, seq_len=seq, sample_start="stream", bos_id=None,
                                      eos_id=vocab - 1)
    manifest.write(folder)
    return folder

"""`lingraft model random`: a randomly initialised Hugging Face model around a given tokenizer.

The smoke pipeline and tests need a "base model" that behaves like a downloaded one (a
folder with config, safetensors weights and its own tokenizer) but is small enough to
train in seconds on a CPU. The vocabulary size and the special token ids come from the
tokenizer; everything else from `architecture`, passed to the model type's HF config.
Torch and transformers are imported inside the runner, so this module stays light.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingraft.config import ModelRef, OutputPath, require


@dataclass
class RandomModelConfig:
    tokenizer: ModelRef = field(metadata={"help": "the model's tokenizer (any spec load_tokenizer accepts); "
                                             "sets the vocabulary size and is saved into the folder"})
    out: OutputPath = field(metadata={"help": "output Hugging Face folder"})
    model_type: str = field(default="llama", metadata={"help": "a transformers model type (llama, mistral, qwen2...)"})
    architecture: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "config keys of the model type, e.g. hidden_size, num_hidden_layers (--set architecture.hidden_size=64)"})
    pad_to_multiple: int = field(default=1, metadata={"help": "pad the embedding rows to a multiple of this"})
    seed: int = 0

    def __post_init__(self) -> None:
        require("vocab_size" not in self.architecture, "architecture.vocab_size",
                "comes from the tokenizer (use pad_to_multiple for extra rows)")
        require(self.pad_to_multiple >= 1, "pad_to_multiple", f"must be >= 1, got {self.pad_to_multiple}")


def _special_ids(tok: Any) -> dict[str, int]:
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def run_random_model(cfg: RandomModelConfig) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lingraft.atomic import atomic_dir
    from lingraft.errors import LingraftError
    from lingraft.manifest import new_manifest
    from lingraft.vocabulary.loading import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    rows = -(-len(tok) // cfg.pad_to_multiple) * cfg.pad_to_multiple
    try:
        model_config = AutoConfig.for_model(cfg.model_type, vocab_size=rows, **_special_ids(tok), **cfg.architecture)
    except (ValueError, TypeError) as exc:
        raise LingraftError(f"model_type {cfg.model_type!r} / architecture: {exc}") from None
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(model_config)
    parameters = sum(p.numel() for p in model.parameters())
    manifest = new_manifest("model.random", cfg, inputs={"tokenizer": cfg.tokenizer})
    with atomic_dir(Path(cfg.out)) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(str(tmp))
        manifest.outputs = {"model": str(cfg.out)}
        manifest.metrics = {"parameters": parameters, "vocab_size": len(tok), "rows": rows}
        manifest.write(tmp)
    print(f"lingraft model random: {cfg.model_type}, {parameters:,} parameters, {len(tok):,} tokens -> {cfg.out}")
    return manifest.metrics

"""Loading the model under evaluation: one place for spec parsing, dtype, device and determinism."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lingraft.hf_folder import resolve_model
from lingraft.errors import LingraftError
from lingraft.log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = get_logger(__name__)


@dataclass
class LoadedModel:
    name: str
    folder: Path
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerFast"

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "model_path": str(self.folder),
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "device": str(self.model.device), "vocab_size": len(self.tokenizer),
                "parameters": sum(p.numel() for p in self.model.parameters())}


def split_name(spec: str) -> tuple[str, str]:
    """`name=spec` -> (name, spec); a bare spec is named after its last path component."""
    if "=" in spec and not Path(spec).exists():
        name, rest = spec.split("=", 1)
        if name and "/" not in name:
            return name, rest
    return Path(spec.rstrip("/")).name.removesuffix(".gguf"), spec


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(spec: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
               seed: int = 0) -> LoadedModel:
    """Model and its own tokenizer from a folder, .gguf file or hub id, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from lingraft.vocabulary.loading import load_tokenizer
    seed_everything(seed)
    name, spec = split_name(spec)
    folder = resolve_model(spec)
    device = pick_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LingraftError(f"{folder}: cannot load the model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})") from None
    model.to(device).eval()
    tokenizer = load_tokenizer(folder, trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise LingraftError(f"{folder}: the tokenizer has {len(tokenizer)} tokens, the model's embedding "
                            f"only {model.get_input_embeddings().weight.shape[0]} rows")
    log.info("loaded %s (%s, %s on %s)", name, folder, dtype, device)
    return LoadedModel(name=name, folder=folder, model=model, tokenizer=tokenizer)

"""Configs of `lingraft hydra export|plain` and `lingraft generate` (light: no torch import)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lingraft.config import ModelRef, OutputPath, require

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(kw_only=True)
class HydraExportConfig:
    """Stack two models that share one body (e.g. I and `lingraft propagate`'s output) into a Hydra model."""
    original: ModelRef = field(metadata={"help": "the model with the original vocabulary (e.g. the instruct model I)"})
    adapted: ModelRef = field(metadata={"help": "the same body with the new vocabulary (e.g. the propagated model)"})
    language: str = field(metadata={"help": "name of the new vocabulary and its head, e.g. ru"})
    original_name: str = field(default="orig", metadata={"help": "name of the original vocabulary and its head"})
    default_head: str | None = field(default=None, metadata={"help": "head used when none is named (default: --language)"})
    out: OutputPath = field(metadata={"help": "output Hydra folder"})
    max_shard_gb: float = field(default=5.0, metadata={"help": "largest output shard in GB"})

    def __post_init__(self) -> None:
        for key in ("language", "original_name"):
            require(bool(_NAME.match(getattr(self, key))), key, "must be a name of letters, digits, _ or -")
        require(self.language != self.original_name, "language", "must differ from original_name")
        require(self.default_head in (None, self.language, self.original_name), "default_head",
                f"must be {self.language!r} or {self.original_name!r}")
        require(self.max_shard_gb > 0, "max_shard_gb", f"must be > 0, got {self.max_shard_gb}")


@dataclass
class HydraPlainConfig:
    """Export one language of a Hydra model as a plain Hugging Face checkpoint (for serving engines)."""
    hydra: Path = field(metadata={"help": "the Hydra model folder"})
    language: str = field(metadata={"help": "which vocabulary and head to keep"})
    out: OutputPath = field(metadata={"help": "output Hugging Face folder"})
    max_shard_gb: float = field(default=5.0, metadata={"help": "largest output shard in GB"})

    def __post_init__(self) -> None:
        require(bool(self.language), "language", "must not be empty")
        require(self.max_shard_gb > 0, "max_shard_gb", f"must be > 0, got {self.max_shard_gb}")


@dataclass
class GenerateConfig:
    """Generate text from a Hydra model (choosing the output head) or a plain Hugging Face model."""
    model: Path = field(metadata={"help": "a Hydra folder or a Hugging Face model folder"})
    prompt: list[str] = field(metadata={
        "help": "prompt text; with a Hydra model NAME:TEXT encodes TEXT with vocabulary NAME, so pieces "
                "of several tokenizers can be mixed"})
    head: str | None = field(default=None, metadata={"help": "Hydra: the output head (default: the model's)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt in the chat template (one user turn)"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate at most"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    seed: int = 0

    def __post_init__(self) -> None:
        require(bool(self.prompt), "prompt", "give at least one prompt piece")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")

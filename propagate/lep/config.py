"""Config of `lingraft propagate` (light: no torch/transformers import, so `lingraft --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.config import ModelRef, OutputPath, require

PropagateMethod = Literal["swap", "overlap", "conversion"]


@dataclass
class PropagateConfig:
    """Move a base model's adapted vocabulary into an instruct sibling (Learned Embedding Propagation)."""
    base: ModelRef = field(metadata={"help": "B: the original base model (HF folder, hub id or .gguf)"})
    adapted: ModelRef = field(metadata={
        "help": "A: B after vocabulary adaptation and embedding training (`lingraft init` / `lingraft export`)"})
    instruct: ModelRef = field(metadata={"help": "I: an instruct model fine-tuned from B"})
    out: OutputPath = field(metadata={"help": "output folder: I with A's vocabulary"})
    method: PropagateMethod = field(default="conversion", metadata={
        "help": "swap: A's tables as they are; overlap: map fitted on shared tokens; "
                "conversion: map fitted on the initialisation transform (LEP's best)"})
    token_map: Path | None = field(default=None, metadata={
        "help": "conversion: the new-from-old token map (default: A's token_map.safetensors, else rebuilt "
                "as mean of old pieces)"})
    pad_to_multiple: int = field(default=64, metadata={
        "help": "when I's added tokens grow the vocabulary, pad the tables to a multiple of this"})
    max_shard_gb: float = field(default=5.0, metadata={"help": "largest output shard in GB"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(self.method == "conversion" or self.token_map is None, "token_map",
                f"only used by --method conversion, not {self.method!r}")
        require(self.pad_to_multiple >= 1, "pad_to_multiple", f"must be >= 1, got {self.pad_to_multiple}")
        require(self.max_shard_gb > 0, "max_shard_gb", f"must be > 0, got {self.max_shard_gb}")

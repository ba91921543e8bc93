"""Configs of `lingraft skillpack create|apply|verify|inspect` (light: no torch import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.config import ModelRef, OutputPath, require

Precision = Literal["int8", "int4", "float16", "float32"]


@dataclass
class SkillpackCreateConfig:
    """Store ``tuned − base`` as a skill pack: low-rank quantized matrices, sparse table rows."""
    base: ModelRef = field(metadata={"help": "the model the tuned one was fine-tuned from (HF folder)"})
    tuned: ModelRef = field(metadata={"help": "the fine-tuned model (same architecture as base)"})
    out: OutputPath = field(metadata={"help": "output pack folder"})
    energy: float = field(default=0.9, metadata={
        "help": "β: each matrix keeps the smallest rank whose singular values hold this fraction of the energy Σs²"})
    top_precision: Precision = field(default="int8", metadata={"help": "precision of the leading singular vectors"})
    rest_precision: Precision = field(default="int4", metadata={"help": "precision of the other singular vectors"})
    top_fraction: float = field(default=0.25, metadata={
        "help": "fraction of each matrix's kept rank stored at --top-precision (rounded up)"})
    group_size: int = field(default=128, metadata={
        "help": "entries of a singular vector sharing one quantization scale (0: one scale per vector)"})
    language: bool = field(default=False, metadata={
        "help": "a language pack: only the embedding tables, the token map and the tokenizer (the vocabulary "
                "must have changed); apply it to an instruct sibling with --allow-other-base"})
    token_map: Path | None = field(default=None, metadata={
        "help": "new-from-old token map when the vocabulary changed (default: the tuned model's "
                "token_map.safetensors, else rebuilt as the mean of old pieces)"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(0.0 < self.energy <= 1.0, "energy", f"must be in (0, 1], got {self.energy}")
        require(0.0 <= self.top_fraction <= 1.0, "top_fraction", f"must be in [0, 1], got {self.top_fraction}")
        require(self.group_size >= 0, "group_size", f"must be >= 0, got {self.group_size}")


@dataclass
class SkillpackApplyConfig:
    """Rebuild a tuned model: the packs' deltas added to a model, in the order given."""
    base: ModelRef = field(metadata={"help": "the model to apply the packs to (HF folder)"})
    packs: list[Path] = field(metadata={"help": "pack folder; several apply in order"})
    out: OutputPath = field(metadata={"help": "output Hugging Face folder"})
    allow_other_base: bool = field(default=False, metadata={
        "help": "apply a pack to a model other than its base, e.g. an instruct sibling (tensor shapes must "
                "still match; a new vocabulary's tables are carried over with --method)"})
    method: Literal["conversion", "swap"] = field(default="conversion", metadata={
        "help": "with --allow-other-base, how a pack's new-vocabulary tables enter the other model: LEP "
                "conversion (fitted map) or swap (as stored)"})
    pad_to_multiple: int = field(default=64, metadata={
        "help": "when the other model's added tokens grow the vocabulary, pad the tables to a multiple of this"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.packs), "packs", "give at least one --pack")
        require(self.pad_to_multiple >= 1, "pad_to_multiple", f"must be >= 1, got {self.pad_to_multiple}")


@dataclass
class SkillpackVerifyConfig:
    """Measure a pack against the models it was made from: per-module error and size."""
    pack: Path = field(metadata={"help": "pack folder"})
    base: ModelRef = field(metadata={"help": "the pack's base model"})
    tuned: ModelRef = field(metadata={"help": "the tuned model the pack was made from"})
    report: OutputPath | None = field(default=None, metadata={"help": "also write the report as JSON here"})


@dataclass
class SkillpackInspectConfig:
    """Print a pack's manifest: base, kind, and each module's policy, rank, bits and size."""
    pack: Path = field(metadata={"help": "pack folder"})
    modules: bool = field(default=False, metadata={"help": "list every module, not just the totals"})

"""Configuration of `lingraft prep pack` (light: no numpy/tokenizers imports, keeps --help fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.data_prep.clean_config import CleanConfig, MixConfig
from lingraft.data_prep.readers import SourceConfig
from lingraft.config import RUNTIME_ONLY, ModelRef, OutputPath, require
from lingraft.preload import allocator_setting_problem

SampleStart = Literal["stream", "document", "paragraph"]


@dataclass
class PackConfig:
    """Tokenize cleaned text into memory-mappable token shards with a sample index."""

    out: OutputPath = field(metadata={"help": "output folder of packed shards"})
    tokenizer: ModelRef = field(metadata={"help": "HF folder, tokenizer.json(.xz), SentencePiece .model or GPT-2 files"})
    input: Path | None = field(default=None, metadata={"help": "a `prep clean` output folder (part_*.jsonl + manifest)"})
    # Instead of `input`: sources to run `prep clean` on first (into <out>/clean), then pack.
    sources: list[SourceConfig] = field(default_factory=list, metadata={
        "help": "clean these sources first (instead of --input); see `prep clean`"})
    clean: CleanConfig = field(default_factory=CleanConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    seq_len: int = field(default=2048, metadata={"help": "tokens per training sample (each stores seq_len + 1)"})
    sample_start: SampleStart = field(default="stream", metadata={
        "help": "stream: cut at stride seq_len; document/paragraph: samples start at such boundaries"})
    bos: bool = field(default=False, metadata={"help": "prepend the BOS token to every document"})
    eos: bool = field(default=True, metadata={"help": "append the EOS token to every document"})
    bos_token: str | None = field(default=None, metadata={"help": "BOS token text when the tokenizer names none"})
    eos_token: str | None = field(default=None, metadata={"help": "EOS token text when the tokenizer names none"})
    # How the work is spread, never what it writes: left out of a pipeline stage's fingerprint,
    # so tuning them reuses the packed output.
    workers: int | None = field(default=None, metadata={RUNTIME_ONLY: True,
        "help": "tokenizer processes of this rank (default: its share of the node's cores, up to 8, when a "
                "faster allocator is installed, else 1: threads of this process)"})
    allocator: str = field(default="auto", metadata={RUNTIME_ONLY: True,
        "help": "malloc preloaded into the worker processes: auto (mimalloc, else jemalloc, when installed), "
                "system, or a path to a malloc library"})
    batch_chars: int = field(default=500_000, metadata={RUNTIME_ONLY: True,
                                                        "help": "characters of text per tokenizer call"})
    split_chars: int = field(default=50_000, metadata={RUNTIME_ONLY: True,
        "help": "tokenize longer documents in pieces of about this size, cut at paragraph starts "
                "(byte-level BPE tokenizers whose tokens cannot cross such a cut; others: never cut)"})

    def __post_init__(self) -> None:
        require(self.seq_len >= 1, "seq_len", f"must be >= 1, got {self.seq_len}")
        require(self.workers is None or self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(self.batch_chars >= 1, "batch_chars", f"must be >= 1, got {self.batch_chars}")
        require(self.split_chars >= 1, "split_chars", f"must be >= 1, got {self.split_chars}")
        problem = allocator_setting_problem(self.allocator)
        require(problem is None, "allocator", problem or "")
        require((self.input is None) != (not self.sources), "input",
                "set either input (a `prep clean` folder) or sources (cleaned first), not both")

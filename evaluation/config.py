"""Configs of the `lingraft eval` commands.

Light on purpose (no torch/transformers import) so `lingraft --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lingraft.config import require

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class ModelOptions:
    """How a model is loaded; mixed into every task config as top-level fields."""
    model: str = field(default="", metadata={"help": "model: HF folder, .gguf file or hub id; name=spec names it"})
    out: str = field(default="", metadata={"help": "write the result here as JSON"})
    dtype: Dtype = field(default="auto", metadata={"help": "auto: bfloat16 on GPU, float32 on CPU"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1..."})
    trust_remote_code: bool = False
    seed: int = field(default=0, metadata={"help": "seed of everything random (few-shot draws)"})

    def _check_model(self) -> None:
        require(bool(self.model), "model", "give a model (HF folder, .gguf file or hub id)")
        require(bool(self.out), "out", "give an output JSON path")


@dataclass
class BpcEvalConfig(ModelOptions):
    """Bits per character and per byte on held-out text (sliding window)."""
    data: str = field(default="", metadata={"help": "text file (jsonl, txt, parquet; compressed ok)"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    name: str | None = field(default=None, metadata={"help": "label of the data in reports (default: file stem)"})
    max_length: int = field(default=1024, metadata={"help": "most tokens of context a scored token sees"})
    stride: int | None = field(default=None, metadata={
        "help": "new tokens scored per window (default max_length: no overlap)"})
    batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward pass"})
    max_docs: int | None = field(default=None, metadata={"help": "score at most this many documents"})
    max_chars: int | None = field(default=None, metadata={"help": "score at most this many characters"})

    def __post_init__(self) -> None:
        self._check_model()
        require(bool(self.data), "data", "give a text file")
        require(self.max_length >= 1, "max_length", f"must be >= 1, got {self.max_length}")
        require(self.stride is None or 1 <= self.stride <= self.max_length, "stride",
                f"must be in 1..max_length ({self.max_length}), got {self.stride}")
        require(self.batch_tokens >= 1, "batch_tokens", f"must be >= 1, got {self.batch_tokens}")
        require(self.max_docs is None or self.max_docs > 0, "max_docs", f"must be > 0, got {self.max_docs}")
        require(self.max_chars is None or self.max_chars > 0, "max_chars", f"must be > 0, got {self.max_chars}")


@dataclass
class TokenizerEvalConfig(ModelOptions):
    """Compression statistics of the model's own tokenizer."""
    data: str = field(default="", metadata={"help": "held-out text file"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    name: str | None = field(default=None, metadata={"help": "label of the data in reports"})
    max_chars: int | None = field(default=None, metadata={"help": "read at most this many characters"})

    def __post_init__(self) -> None:
        self._check_model()
        require(bool(self.data), "data", "give a text file")


@dataclass
class GenerationOptions:
    """Batched greedy generation through the chat template."""
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=256, metadata={"help": "cap on generated tokens per prompt"})

    def _check_generation(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass
class CopyEvalConfig(GenerationOptions, ModelOptions):
    """Darumeru-style copy: repeat a sentence or a paragraph verbatim (greedy, chat template)."""
    sentences: list[str] = field(default_factory=list, metadata={
        "help": "sentence set: [name=]FILE[@field], one sentence per record"})
    paragraphs: list[str] = field(default_factory=list, metadata={
        "help": "paragraph set: [name=]FILE[@field]; documents are cut into paragraphs"})
    text_field: str = field(default="text", metadata={"help": "default field of the sets"})
    max_items: int = field(default=50, metadata={"help": "items per set (the first ones, deterministic)"})
    paragraph_chars: list[int] = field(default_factory=lambda: [200, 800], metadata={
        "help": "min and max characters of a paragraph"})
    prompt: str = field(default="Repeat the following text exactly, without any changes or comments:\n\n{text}",
                        metadata={"help": "user message; {text} is replaced by the item"})

    def __post_init__(self) -> None:
        self._check_model()
        self._check_generation()
        require(bool(self.sentences or self.paragraphs), "sentences", "give --sentences and/or --paragraphs")
        require(self.max_items >= 1, "max_items", f"must be >= 1, got {self.max_items}")
        require(len(self.paragraph_chars) == 2 and 0 < self.paragraph_chars[0] <= self.paragraph_chars[1],
                "paragraph_chars", f"must be [min, max] with 0 < min <= max, got {self.paragraph_chars}")
        require("{text}" in self.prompt, "prompt", "must contain {text}")


@dataclass
class McEvalConfig(ModelOptions):
    """Multiple choice by log-likelihood: generic JSONL (context, choices, label) or a known set."""
    task: list[str] = field(default_factory=list, metadata={
        "help": "FORMAT=FILE with FORMAT generic, parus, rcb, rwsd, rucola or russe"})
    num_fewshot: int = field(default=0, metadata={"help": "solved examples put before each item"})
    fewshot_separator: str = field(default="\n\n", metadata={"help": "between few-shot examples"})
    limit: int | None = field(default=None, metadata={"help": "items per task (the first ones)"})
    max_length: int = field(default=2048, metadata={"help": "longest input; longer contexts lose their start"})
    batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward pass"})
    strict: bool = field(default=False, metadata={"help": "a bad item is an error instead of being skipped"})

    def __post_init__(self) -> None:
        self._check_model()
        require(bool(self.task), "task", "give at least one --task FORMAT=FILE")
        require(self.num_fewshot >= 0, "num_fewshot", f"must be >= 0, got {self.num_fewshot}")
        require(self.limit is None or self.limit > 0, "limit", f"must be > 0, got {self.limit}")
        require(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")


@dataclass
class SpeedEvalConfig(GenerationOptions, ModelOptions):
    """Generation throughput, tokens/s and characters/s, of a model and (optionally) its original."""
    baseline: str | None = field(default=None, metadata={"help": "the original model, run on the same prompts"})
    data: str = field(default="", metadata={"help": "prompts file (jsonl, txt...)"})
    text_field: str = field(default="text", metadata={"help": "field holding the prompt"})
    max_prompts: int = field(default=16, metadata={"help": "prompts used (the first ones)"})
    ignore_eos: bool = field(default=False, metadata={"help": "always generate max_new_tokens"})
    repeats: int = field(default=1, metadata={"help": "timed passes over the prompts (after one warm-up)"})

    def __post_init__(self) -> None:
        self._check_model()
        self._check_generation()
        require(bool(self.data), "data", "give a prompts file")
        require(self.max_prompts >= 1, "max_prompts", f"must be >= 1, got {self.max_prompts}")
        require(self.repeats >= 1, "repeats", f"must be >= 1, got {self.repeats}")


@dataclass
class ReportConfig:
    """Side by side: several models' result JSONs -> report.json, report.md, report.png."""
    result: list[str] = field(default_factory=list, metadata={
        "help": "result JSON of any eval task, or a folder of them"})
    out: str = field(default="", metadata={"help": "output folder"})

    def __post_init__(self) -> None:
        require(bool(self.result), "result", "give at least one result JSON")
        require(bool(self.out), "out", "give an output folder")


@dataclass
class HarnessConfig:
    """Run lm-evaluation-harness (`lm_eval --model hf`) on a model, when it is installed."""
    model: str = field(default="", metadata={"help": "HF model folder"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "lm_eval task names"})
    out: str = field(default="", metadata={"help": "output folder (lm_eval --output_path)"})
    num_fewshot: int | None = None
    batch_size: str = "auto"
    device: str = "cpu"
    limit: int | None = None
    extra: list[str] = field(default_factory=list, metadata={"help": "extra lm_eval arguments, verbatim"})

    def __post_init__(self) -> None:
        require(bool(self.model), "model", "give a model folder")
        require(bool(self.tasks), "tasks", "give at least one lm_eval task")
        require(bool(self.out), "out", "give an output folder")

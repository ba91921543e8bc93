"""Configs of the `lingraft eval` commands.

Light on purpose (no torch/transformers import) so `lingraft --help` stays fast.

Every task command takes one or more models (`model`, repeatable) and one or more data sets,
and scores every (model, data set) pair into one output folder (evaluation/pairs.py). A model
is a `ModelRef` string: a HF folder, a .gguf file or a hub id, optionally `name=spec`. A data
set is a `DataSet` (its `path` a local input), written `[name=]FILE[@field]` on the command
line or as a mapping in YAML.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.config import ModelRef, OutputPath, require

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
McFormat = Literal["generic", "parus", "rcb", "rwsd", "rucola", "russe"]
_SUFFIXES = (".xz", ".gz", ".zst", ".bz2", ".jsonl", ".json", ".txt", ".parquet", ".csv")


def file_stem(path: str | Path) -> str:
    """`ud_russian_sentences.jsonl.xz` -> `ud_russian_sentences`: the default name of a data set."""
    stem = Path(path).name
    for suffix in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


@dataclass(kw_only=True)
class DataSet:
    """A text file (jsonl, txt, parquet, a prepared folder; compressed ok) and its name in results."""
    path: Path
    name: str = ""                       # default: the file's stem
    text_field: str | None = None        # default: the command's text_field

    def __post_init__(self) -> None:
        self.name = self.name or file_stem(self.path)
        require("/" not in self.name, "name", f"a data set name has no '/', got {self.name!r}")

    @classmethod
    def from_string(cls, spec: str) -> dict:
        """`[name=]FILE[@field]`; an existing file whose name holds '=' or '@' is taken as it is."""
        name, rest = spec.split("=", 1) if "=" in spec and not Path(spec).exists() else ("", spec)
        path, text_field = rest.rsplit("@", 1) if "@" in rest and not Path(rest).exists() else (rest, None)
        return {"path": path, "name": name, "text_field": text_field}

    def field_or(self, default: str) -> str:
        return self.text_field or default


@dataclass(kw_only=True)
class McTask:
    """A multiple-choice set: its FORMAT (how to read it) and file; `FORMAT=FILE` on the command line."""
    format: McFormat
    path: Path
    name: str = ""                       # default: the format, or the file's stem for generic

    def __post_init__(self) -> None:
        self.name = self.name or (file_stem(self.path) if self.format == "generic" else self.format)

    @classmethod
    def from_string(cls, spec: str) -> dict:
        fmt, sep, path = spec.partition("=")
        return {"format": fmt, "path": path} if sep else {"format": "generic", "path": spec}


@dataclass(kw_only=True)
class ModelOptions:
    """The models and how they are loaded; mixed into every task config as top-level fields."""
    model: list[ModelRef] = field(metadata={
        "help": "model: HF folder, .gguf file or hub id; name=spec names it; several: every one is scored"})
    out: OutputPath = field(metadata={"help": "output folder: results.jsonl (one record per model and data set), "
                                        "report.md, manifest.json"})
    dtype: Dtype = field(default="auto", metadata={"help": "auto: bfloat16 on GPU, float32 on CPU"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1..."})
    trust_remote_code: bool = False
    seed: int = field(default=0, metadata={"help": "seed of everything random (few-shot draws)"})

    def _check_models(self) -> None:
        require(bool(self.model), "model", "give at least one model")   # an explicit empty list


@dataclass(kw_only=True)
class BpcEvalConfig(ModelOptions):
    """Bits per character and per byte on held-out text (sliding window)."""
    data: list[DataSet] = field(metadata={"help": "data set: [name=]FILE[@field]; several: every one is scored"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    max_length: int = field(default=1024, metadata={"help": "most tokens of context a scored token sees"})
    stride: int | None = field(default=None, metadata={
        "help": "new tokens scored per window (default max_length: no overlap)"})
    batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward pass"})
    max_docs: int | None = field(default=None, metadata={"help": "score at most this many documents per set"})
    max_chars: int | None = field(default=None, metadata={"help": "score at most this many characters per set"})

    def __post_init__(self) -> None:
        self._check_models()
        require(bool(self.data), "data", "give at least one data set")
        require(self.max_length >= 1, "max_length", f"must be >= 1, got {self.max_length}")
        require(self.stride is None or 1 <= self.stride <= self.max_length, "stride",
                f"must be in 1..max_length ({self.max_length}), got {self.stride}")
        require(self.batch_tokens >= 1, "batch_tokens", f"must be >= 1, got {self.batch_tokens}")
        require(self.max_docs is None or self.max_docs > 0, "max_docs", f"must be > 0, got {self.max_docs}")
        require(self.max_chars is None or self.max_chars > 0, "max_chars", f"must be > 0, got {self.max_chars}")


@dataclass(kw_only=True)
class TokenizerEvalConfig(ModelOptions):
    """Compression statistics of each model's own tokenizer."""
    data: list[DataSet] = field(metadata={"help": "held-out data set: [name=]FILE[@field]; repeatable"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    max_chars: int | None = field(default=None, metadata={"help": "read at most this many characters per set"})

    def __post_init__(self) -> None:
        self._check_models()
        require(bool(self.data), "data", "give at least one data set")


@dataclass(kw_only=True)
class GenerationOptions:
    """Batched greedy generation through the chat template."""
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=256, metadata={"help": "cap on generated tokens per prompt"})

    def _check_generation(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass(kw_only=True)
class CopyEvalConfig(GenerationOptions, ModelOptions):
    """Darumeru-style copy: repeat a sentence or a paragraph verbatim (greedy, chat template)."""
    sentences: list[DataSet] = field(default_factory=list, metadata={
        "help": "sentence set: [name=]FILE[@field], one sentence per record"})
    paragraphs: list[DataSet] = field(default_factory=list, metadata={
        "help": "paragraph set: [name=]FILE[@field]; documents are cut into paragraphs"})
    text_field: str = field(default="text", metadata={"help": "default field of the sets"})
    max_items: int = field(default=50, metadata={"help": "items per set (the first ones, deterministic)"})
    paragraph_chars: list[int] = field(default_factory=lambda: [200, 800], metadata={
        "help": "min and max characters of a paragraph"})
    prompt: str = field(default="Repeat the following text exactly, without any changes or comments:\n\n{text}",
                        metadata={"help": "user message; {text} is replaced by the item"})

    def __post_init__(self) -> None:
        self._check_models()
        self._check_generation()
        require(bool(self.sentences or self.paragraphs), "sentences", "give --sentences and/or --paragraphs")
        require(self.max_items >= 1, "max_items", f"must be >= 1, got {self.max_items}")
        require(len(self.paragraph_chars) == 2 and 0 < self.paragraph_chars[0] <= self.paragraph_chars[1],
                "paragraph_chars", f"must be [min, max] with 0 < min <= max, got {self.paragraph_chars}")
        require("{text}" in self.prompt, "prompt", "must contain {text}")


@dataclass(kw_only=True)
class McEvalConfig(ModelOptions):
    """Multiple choice by log-likelihood: generic JSONL (context, choices, label) or a known set."""
    task: list[McTask] = field(metadata={
        "help": "FORMAT=FILE with FORMAT generic, parus, rcb, rwsd, rucola or russe"})
    num_fewshot: int = field(default=0, metadata={"help": "solved examples put before each item"})
    fewshot_separator: str = field(default="\n\n", metadata={"help": "between few-shot examples"})
    limit: int | None = field(default=None, metadata={"help": "items per task (the first ones)"})
    max_length: int = field(default=2048, metadata={"help": "longest input; longer contexts lose their start"})
    batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward pass"})
    strict: bool = field(default=False, metadata={"help": "a bad item is an error instead of being skipped"})

    def __post_init__(self) -> None:
        self._check_models()
        require(bool(self.task), "task", "give at least one --task FORMAT=FILE")
        require(self.num_fewshot >= 0, "num_fewshot", f"must be >= 0, got {self.num_fewshot}")
        require(self.limit is None or self.limit > 0, "limit", f"must be > 0, got {self.limit}")
        require(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")


@dataclass(kw_only=True)
class SpeedEvalConfig(GenerationOptions, ModelOptions):
    """Generation throughput, tokens/s and characters/s, of models and (optionally) their original."""
    baseline: ModelRef | None = field(default=None, metadata={
        "help": "the original model, run first on the same prompts; the others' records get *_vs_baseline"})
    data: list[DataSet] = field(metadata={"help": "prompts file: [name=]FILE[@field]; repeatable"})
    text_field: str = field(default="text", metadata={"help": "field holding the prompt"})
    max_prompts: int = field(default=16, metadata={"help": "prompts used (the first ones)"})
    ignore_eos: bool = field(default=False, metadata={"help": "always generate max_new_tokens"})
    repeats: int = field(default=1, metadata={"help": "timed passes over the prompts (after one warm-up)"})

    def __post_init__(self) -> None:
        self._check_models()
        self._check_generation()
        require(bool(self.data), "data", "give at least one prompts file")
        require(self.max_prompts >= 1, "max_prompts", f"must be >= 1, got {self.max_prompts}")
        require(self.repeats >= 1, "repeats", f"must be >= 1, got {self.repeats}")


@dataclass(kw_only=True)
class ReportConfig:
    """Side by side: the records of several eval outputs -> results.jsonl, report.json, report.md, report.png."""
    result: list[Path] = field(metadata={
        "help": "an eval output folder or its results.jsonl (or an earlier result JSON, or a folder of them)"})
    out: OutputPath = field(metadata={"help": "output folder"})

    def __post_init__(self) -> None:
        require(bool(self.result), "result", "give at least one eval result")


@dataclass(kw_only=True)
class HarnessConfig:
    """Run lm-evaluation-harness (`lm_eval --model hf`) on a model, when it is installed."""
    model: Path = field(metadata={"help": "HF model folder"})
    tasks: list[str] = field(metadata={"help": "lm_eval task names"})
    out: OutputPath = field(metadata={"help": "output folder (lm_eval --output_path)"})
    num_fewshot: int | None = None
    batch_size: str = "auto"
    device: str = "cpu"
    limit: int | None = None
    extra: list[str] = field(default_factory=list, metadata={"help": "extra lm_eval arguments, verbatim"})

    def __post_init__(self) -> None:
        require(bool(self.tasks), "tasks", "give at least one lm_eval task")

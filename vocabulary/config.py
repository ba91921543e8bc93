"""Configs of `lingraft tokenizer train` and `lingraft tokenizer stats`.

Light on purpose (no transformers/tokenizers import) so `lingraft --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lingraft.config import DatasetRef, ModelRef, OutputPath, require


@dataclass
class TrainTokenizerConfig:
    """Train a BPE or Unigram tokenizer, from scratch or with the pipeline of a base tokenizer."""
    data: list[DatasetRef] = field(metadata={"help": "corpus files or folders (jsonl, txt, parquet...)"})
    out: OutputPath = field(metadata={"help": "output folder (a Hugging Face tokenizer folder + manifest.json)"})
    vocab_size: int = field(default=32000, metadata={"help": "total size, special and byte-fallback tokens included"})
    kind: Literal["bpe", "unigram"] = field(default="bpe", metadata={"help": "subword model"})
    style: Literal["byte_level", "sentencepiece"] = field(
        default="byte_level",
        metadata={"help": "from-scratch pipeline: byte-level (GPT/Llama-3) or sentencepiece "
                          "(▁ for spaces + byte fallback)"})
    like: ModelRef | None = field(default=None, metadata={
        "help": "base tokenizer whose pipeline, special/added tokens and chat template the new one copies"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    max_chars: int | None = field(default=None, metadata={"help": "stop reading the corpus after this many characters"})
    min_frequency: int | None = field(default=None, metadata={
        "help": "BPE only: a merge must occur at least this often (default 2)"})
    max_token_length: int | None = field(default=None, metadata={
        "help": "longest token in characters (BPE default: unlimited; Unigram default: 16)"})
    special_tokens: list[str] = field(default_factory=list, metadata={
        "help": "extra special tokens; from scratch the defaults are <unk> <s> </s> (sentencepiece) "
                "or <|endoftext|> (byte_level)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom code when loading `like`"})

    def __post_init__(self) -> None:
        require(bool(self.data), "data", "give at least one corpus file or folder")
        require(self.vocab_size >= 32, "vocab_size", f"must be >= 32, got {self.vocab_size}")
        require(self.max_chars is None or self.max_chars > 0, "max_chars", f"must be > 0, got {self.max_chars}")
        require(self.min_frequency is None or self.min_frequency >= 1, "min_frequency",
                f"must be >= 1, got {self.min_frequency}")
        require(self.min_frequency is None or self.kind == "bpe", "min_frequency",
                "applies to BPE only (the Unigram trainer prunes by likelihood, not by count)")
        require(self.max_token_length is None or self.max_token_length >= 1, "max_token_length",
                f"must be >= 1, got {self.max_token_length}")
        require(len(set(self.special_tokens)) == len(self.special_tokens), "special_tokens", "holds duplicates")


@dataclass
class TokenizerStatsConfig:
    """Compression statistics of any number of tokenizers on the same held-out text."""
    tokenizer: list[ModelRef] = field(metadata={"help": "a tokenizer spec, or name=spec to name it in the report"})
    data: list[DatasetRef] = field(metadata={"help": "held-out text files or folders"})
    out: OutputPath | None = field(default=None, metadata={"help": "write the statistics here as JSON"})
    text_field: str = field(default="text", metadata={"help": "JSON/parquet field holding the text"})
    max_chars: int | None = field(default=None, metadata={"help": "read at most this many characters of data"})
    batch_size: int = field(default=256, metadata={"help": "texts per encode_batch call"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.tokenizer), "tokenizer", "give at least one tokenizer")
        require(bool(self.data), "data", "give at least one data file")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_chars is None or self.max_chars > 0, "max_chars", f"must be > 0, got {self.max_chars}")

"""Configuration of `lingraft prep sft` (light: no tokenizer imports, keeps --help fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lingraft.config import ModelRef, OutputPath, require


@dataclass
class SftPackConfig:
    """Render chat data with the model's chat template into packed shards with an assistant-only loss mask."""

    input: list[Path] = field(metadata={"help": "messages JSONL files (.gz/.xz/.zst/.bz2 ok), one chat per line"})
    tokenizer: ModelRef = field(metadata={"help": "the model folder (its tokenizer and chat template)"})
    out: OutputPath = field(metadata={"help": "output folder of packed shards"})
    seq_len: int = field(default=2048, metadata={
        "help": "tokens per training sample; a longer chat is truncated (data_prep/chat.py documents the rule)"})
    chat_template: Path | None = field(default=None, metadata={
        "help": "a .jinja file to render with instead of the tokenizer's own template"})
    messages_field: str = field(default="messages", metadata={"help": "the JSON field holding the message list"})
    text_field: str | None = field(default=None, metadata={
        "help": "a record without messages but with this field is a plain document, every token a target "
                "(replay text); unset: such records are skipped as missing_field"})
    strict: bool = field(default=False, metadata={"help": "stop at the first unusable chat instead of skipping it"})
    max_records: int | None = field(default=None, metadata={"help": "read at most this many records (all inputs)"})
    open_bins: int = field(default=64, metadata={
        "help": "samples filled at once (best fit); more packs tighter, each holds up to seq_len ids in memory"})
    shard_tokens: int = field(default=50_000_000, metadata={"help": "start a new shard after this many tokens"})

    def __post_init__(self) -> None:
        require(bool(self.input), "input", "give at least one messages JSONL file")
        require(self.seq_len >= 8, "seq_len", f"must be >= 8, got {self.seq_len}")
        require(bool(self.messages_field), "messages_field", "must not be empty")
        require(self.text_field is None or (bool(self.text_field) and self.text_field != self.messages_field),
                "text_field", "must not be empty or the messages field")
        require(self.max_records is None or self.max_records > 0, "max_records", "must be > 0")
        require(self.open_bins >= 1, "open_bins", "must be >= 1")
        require(self.shard_tokens >= self.seq_len, "shard_tokens", "must be >= seq_len")
        require(self.chat_template is None or Path(self.chat_template).is_file(), "chat_template",
                f"{self.chat_template}: file not found")

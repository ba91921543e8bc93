"""Configs of `lingraft tokenizer extend` and `lingraft tokenizer optimize` (LEP vocabulary variants).

Light module: no tokenizers/transformers import, so `lingraft --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from lingraft.config import DatasetRef, ModelRef, OutputPath, require


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(kw_only=True)
class NewVocabSource:
    """Where the new-language tokenizer comes from: a trained one, or one trained here on `data`
    with the base's normalizer and pre-tokenizer (so its merges apply to the base's symbols)."""
    base: ModelRef = field(metadata=_help("base tokenizer: HF folder, tokenizer.json[.xz], .model, GPT-2 files"))
    out: OutputPath = field(metadata=_help("output folder (HF tokenizer + vocab_map.json + manifest.json)"))
    new: ModelRef | None = field(default=None, metadata=_help(
        "an already-trained new-language BPE in the base's convention"))
    data: list[DatasetRef] = field(default_factory=list, metadata=_help("new-language corpus (jsonl/txt/parquet, may be "
                                                                  "compressed) to train the new tokenizer on"))
    text_field: str = field(default="text", metadata=_help("JSON field holding the text"))
    new_vocab_size: int = field(default=32000, metadata=_help("vocabulary size of a new tokenizer trained on --data"))
    max_chars: int | None = field(default=None, metadata=_help("read at most this many characters of --data"))
    new_scripts: list[str] = field(default_factory=list, metadata=_help(
        "Unicode scripts of the new language (e.g. Cyrillic); every new token must hold a letter of one, so "
        "text without one encodes as the base encodes it (default: the scripts of the new tokens' letters)"))

    def __post_init__(self) -> None:
        require(self.new_vocab_size > 0, "new_vocab_size", f"must be > 0, got {self.new_vocab_size}")
        require(self.max_chars is None or self.max_chars > 0, "max_chars", f"must be > 0, got {self.max_chars}")


@dataclass(kw_only=True)
class ExtendConfig(NewVocabSource):
    """LEP *Extended*: every base token at its old id, then up to `add` new tokens."""
    add: int | None = field(default=None, metadata=_help("append at most this many new tokens (default: all that "
                                                          "the merge rule accepts)"))
    protect: list[DatasetRef] = field(default_factory=list, metadata=_help("corpora (e.g. English) whose base token ids "
                                                                     "must stay the same"))

    def __post_init__(self) -> None:
        super().__post_init__()
        require((self.new is None) != (not self.data), "new",
                "give exactly one of --new (a trained tokenizer) or --data (a corpus to train one on)")
        require(self.add is None or self.add > 0, "add", f"must be > 0, got {self.add}")


@dataclass(kw_only=True)
class OptimizeConfig(NewVocabSource):
    """LEP *Optimized*: the base's `keep` tokens most used on --data, then its `add` most used new tokens."""
    data: list[DatasetRef] = field(metadata=_help("target-language corpus (jsonl/txt/parquet, may be compressed): token "
                                                  "usage is counted on it (and without --new the new tokenizer trained)"))
    keep: int = field(metadata=_help("base tokens to keep (atoms included; special/added tokens on top)"))
    add: int = field(metadata=_help("new tokens to append"))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.data), "data", "give at least one target-language corpus file or folder")
        require(self.keep > 0, "keep", f"must be > 0, got {self.keep}")
        require(self.add >= 0, "add", f"must be >= 0, got {self.add}")

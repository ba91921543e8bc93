"""Configuration of `lingraft prep clean` (light: no numpy/datasketch imports, keeps --help fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lingraft.data_prep.readers import SourceConfig
from lingraft.config import ConfigError, OutputPath, require

NormalForm = Literal["NFC", "NFKC", "NFD", "NFKD", "none"]


@dataclass
class NearDedupConfig:
    """MinHash-LSH near-duplicate removal: a document whose shingle set has estimated Jaccard
    similarity >= `threshold` with an earlier kept document is dropped."""

    enabled: bool = True
    threshold: float = field(default=0.8, metadata={"help": "Jaccard similarity that counts as a duplicate"})
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations (more: finer estimates, slower)"})
    shingle: Literal["word", "char"] = "word"
    shingle_size: int = field(default=5, metadata={"help": "words (or characters) per shingle"})
    seed: int = 1

    def __post_init__(self) -> None:
        require(0.0 < self.threshold <= 1.0, "threshold", f"must be in (0, 1], got {self.threshold}")
        require(self.num_perm >= 16, "num_perm", f"must be >= 16, got {self.num_perm}")
        require(self.shingle_size >= 1, "shingle_size", f"must be >= 1, got {self.shingle_size}")


@dataclass
class CleanConfig:
    """Per-document normalisation and filters, applied in this order: normalise, length,
    script, exact duplicate, near duplicate."""

    normalize: NormalForm = "NFC"
    # Unicode scripts (Cyrillic, Latin, Greek, Han, Common, Inherited...) or general categories
    # (L, N, Nd, P, S, Zs, M...), as `regex` \\p{...} names. Empty: no script filter. Whitespace
    # is always allowed.
    allowed_scripts: list[str] = field(default_factory=list)
    max_disallowed_share: float = field(default=0.1, metadata={
        "help": "drop a document when more than this share of its characters is outside allowed_scripts"})
    min_chars: int = 1
    max_chars: int | None = None
    min_words: int = 0
    exact_dedup: bool = True
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)

    def __post_init__(self) -> None:
        require(0.0 <= self.max_disallowed_share < 1.0, "max_disallowed_share",
                f"must be in [0, 1), got {self.max_disallowed_share}")
        require(self.min_chars >= 1, "min_chars", f"must be >= 1, got {self.min_chars}")
        require(self.max_chars is None or self.max_chars >= self.min_chars, "max_chars",
                f"must be >= min_chars ({self.min_chars}), got {self.max_chars}")
        require(self.min_words >= 0, "min_words", f"must be >= 0, got {self.min_words}")
        if self.allowed_scripts:
            import regex  # light (a C extension); validating here fails before any work starts

            for i, name in enumerate(self.allowed_scripts):
                try:
                    regex.compile(rf"\p{{{name}}}")
                except regex.error:
                    raise ConfigError(f"allowed_scripts[{i}]: '{name}' is not a Unicode script "
                                      "or general category") from None


@dataclass
class MixConfig:
    """How sources are interleaved: by characters, in proportion to their weights."""

    # stop: end the output when any source runs out, so the declared mix holds exactly.
    # continue: when one runs out, keep draining the others (the mix drifts).
    on_exhausted: Literal["stop", "continue"] = "stop"
    max_chars: int | None = field(default=None, metadata={"help": "stop once the output holds this many characters"})

    def __post_init__(self) -> None:
        require(self.max_chars is None or self.max_chars >= 1, "max_chars", f"must be >= 1, got {self.max_chars}")


@dataclass
class CleanStageConfig:
    """Read, clean, deduplicate and mix text sources into JSONL parts."""

    sources: list[SourceConfig] = field(metadata={
        "help": "a corpus path (or a YAML mapping such as '{path: en.jsonl, weight: 0.1}')"})
    out: OutputPath = field(metadata={"help": "output folder (written atomically)"})
    clean: CleanConfig = field(default_factory=CleanConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    part_chars: int = field(default=4_000_000, metadata={"help": "a new part starts once a part holds this many characters"})
    strict: bool = field(default=False, metadata={"help": "fail on the first bad input record instead of dropping it"})

    def __post_init__(self) -> None:
        require(len(self.sources) >= 1, "sources", "give at least one source")
        seen: dict[str, int] = {}
        for i, src in enumerate(self.sources):
            require(src.name not in seen, f"sources[{i}].name",
                    f"'{src.name}' is also the name of sources[{seen.get(src.name)}]; names must be unique")
            seen[src.name] = i
        require(self.part_chars >= 1, "part_chars", f"must be >= 1, got {self.part_chars}")

"""Config of `lingraft calibrate`: LEP self-calibration (light: no torch/transformers import).

The original instruct model answers instruction prompts; bad answers are filtered out; corpus
text becomes "repeat this text" tasks; the propagated model is then fine-tuned on the result
so it learns to produce the instruct model's answers in its new tokenization.

Language-specific defaults (which script the answers must be written in, how a copy task is
phrased) come from `LANGUAGE_PRESETS`, chosen by `language`; every one of them can be set
explicitly, and a language without a preset must set them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lingraft.config import DatasetRef, ModelRef, OutputPath, require


@dataclass(frozen=True)
class LanguagePreset:
    scripts: tuple[str, ...]          # Unicode character-name prefixes of the language's letters
    copy_phrasings: tuple[str, ...]   # user messages asking to repeat {text}


LANGUAGE_PRESETS: dict[str, LanguagePreset] = {
    "ru": LanguagePreset(scripts=("CYRILLIC",), copy_phrasings=(
        "Повтори этот текст дословно:\n\n{text}",
        "Перепиши следующий текст без изменений.\n\n{text}",
        "Скопируй текст ниже в точности, ничего не добавляя:\n\n{text}",
    )),
    "en": LanguagePreset(scripts=("LATIN",), copy_phrasings=(
        "Repeat this text word for word:\n\n{text}",
        "Rewrite the following text without any changes.\n\n{text}",
        "Copy the text below exactly, adding nothing:\n\n{text}",
    )),
}

_RANGE = re.compile(r"^[0-9A-Fa-f]{1,6}-[0-9A-Fa-f]{1,6}$")


@dataclass
class PromptSourceConfig:
    """One file of instruction prompts: JSONL (optionally compressed) or a JSON array of objects.

    Fields are dotted paths into a record; a number indexes a list, e.g. `messages.0.content`."""
    path: Path
    name: str = ""                    # label in ids and manifests; defaults to the file stem
    prompt_field: str = "instruction"
    input_field: str | None = None    # appended after a blank line when non-empty (e.g. instances.0.input)
    id_field: str | None = None       # default: the record's number in the file
    limit: int | None = None          # the first `limit` prompts of the file

    def __post_init__(self) -> None:
        require(bool(self.prompt_field), "prompt_field", "must not be empty")
        require(self.limit is None or self.limit > 0, "limit", f"must be > 0, got {self.limit}")
        if not self.name:
            base = Path(self.path).name
            for suffix in (".gz", ".xz", ".zst", ".bz2"):
                base = base.removesuffix(suffix)
            self.name = Path(base).stem or base

    @classmethod
    def from_string(cls, path: str) -> dict:
        return {"path": path}


@dataclass
class GenerationSettings:
    backend: Literal["auto", "hf", "vllm"] = "auto"   # auto: vLLM when importable, else HF generate
    max_new_tokens: int = 1024
    batch_size: int = 16              # prompts per durable batch (vLLM: make it large, e.g. 512)
    max_prompt_tokens: int | None = None   # default: the model's context minus max_new_tokens
    long_prompts: Literal["truncate", "drop"] = "truncate"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1     # vLLM only
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1")
        require(self.batch_size >= 1, "generation.batch_size", "must be >= 1")
        require(self.max_prompt_tokens is None or self.max_prompt_tokens >= 1,
                "generation.max_prompt_tokens", "must be >= 1")
        require(self.tensor_parallel_size >= 1, "generation.tensor_parallel_size", "must be >= 1")


@dataclass
class ScriptFilter:
    """Drop answers whose letters are mostly not in the language's script.

    A prompt that asks for another language ("translate into English") loses its answer too:
    3 of the 500 Russian arena reference answers go that way with the defaults."""
    enabled: bool = True
    scripts: list[str] = field(default_factory=list)   # Unicode name prefixes, e.g. CYRILLIC; [] = preset
    ranges: list[str] = field(default_factory=list)    # extra code point ranges, hex, e.g. 0400-04FF
    min_share: float = 0.5            # of the letters outside code blocks
    min_letters: int = 20             # answers with fewer letters (numbers, code) are not judged by script
    ignore_code_blocks: bool = True   # ``` fenced code is language-neutral

    def __post_init__(self) -> None:
        require(0 <= self.min_share <= 1, "script.min_share", "must be in [0, 1]")
        require(self.min_letters >= 0, "script.min_letters", "must be >= 0")
        for r in self.ranges:
            require(bool(_RANGE.match(r)), "script.ranges", f"expected HEX-HEX, got {r!r}")


@dataclass
class LoopFilter:
    """Drop answers that repeat themselves: too many word n-grams seen earlier in the same answer."""
    enabled: bool = True
    ngram: int = 6
    max_repeated_share: float = 0.5   # 1 of the 500 ru arena reference answers is above (0.525)

    def __post_init__(self) -> None:
        require(self.ngram >= 1, "loop.ngram", "must be >= 1")
        require(0 < self.max_repeated_share <= 1, "loop.max_repeated_share", "must be in (0, 1]")


@dataclass
class JudgeConfig:
    """An optional scorer "module:function" called as f(prompts: list[str], answers: list[str]) -> list[float]."""
    function: str | None = None
    threshold: float = 0.5            # answers scoring below are dropped
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.function is None or re.match(r"^[\w.]+:\w+$", self.function) is not None,
                "judge.function", f"expected module:function, got {self.function!r}")
        require(self.batch_size >= 1, "judge.batch_size", "must be >= 1")


@dataclass
class PassageConfig:
    """Paragraph-sized passages drawn from a corpus (none when `corpus` is unset)."""
    corpus: DatasetRef | None = None
    text_field: str = "text"
    count: int = 500
    min_chars: int = 64
    max_chars: int = 1500
    max_candidates: int = 100_000     # passages read from the corpus to sample `count` from
    setting: ClassVar[str] = "passages"

    def __post_init__(self) -> None:
        require(self.count >= 1, f"{self.setting}.count", "must be >= 1")
        require(1 <= self.min_chars <= self.max_chars, f"{self.setting}.min_chars", "must be in [1, max_chars]")
        require(self.max_candidates >= self.count, f"{self.setting}.max_candidates", "must be >= count")


@dataclass
class CopyConfig(PassageConfig):
    """'Repeat this text' tasks from corpus passages."""
    phrasings: list[str] = field(default_factory=list)   # with {text}; [] = the language preset's
    setting: ClassVar[str] = "copy"

    def __post_init__(self) -> None:
        super().__post_init__()
        for p in self.phrasings:
            require("{text}" in p, "copy.phrasings", f"every phrasing needs a {{text}} slot: {p!r}")


@dataclass
class ReplayConfig(PassageConfig):
    """Plain corpus passages trained on as text beside the chats: the cross-entropy on the
    languages the model already reads holds them while the copy tasks change the body."""
    count: int = 128
    setting: ClassVar[str] = "replay"


@dataclass
class CalibrateTrainSettings:
    """Fine-tuning of the propagated model; defaults are the LEP paper's self-calibration."""
    enabled: bool = True
    seq_len: int = 2048
    max_steps: int | None = None      # default: `epochs` passes over the packed samples
    epochs: float = 1.0
    lr: float = 2.5e-5
    warmup_steps: int = 20
    micro_batch_size: int = 1
    grad_accum_steps: int = 8
    backend: Literal["local", "deepspeed", "fsdp"] = "local"
    lora_r: int = 8
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    lora_layers: list[int] | None = field(default_factory=lambda: [0, -1])   # first and last block; None: all
    train_tables: bool = True         # embeddings and head trained and saved in full
    overrides: dict[str, Any] = field(default_factory=dict)   # any other TrainConfig key, dotted

    def __post_init__(self) -> None:
        require(self.seq_len >= 2, "train.seq_len", "must be >= 2")
        require(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1")
        require(self.epochs > 0, "train.epochs", "must be > 0")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(self.lora_r >= 1, "train.lora_r", "must be >= 1")
        require(self.lora_layers is None or bool(self.lora_layers), "train.lora_layers",
                "needs at least one block index (or null for every block)")


@dataclass(kw_only=True)
class CalibrateConfig:
    """LEP self-calibration: the instruct model's own answers + copy tasks -> fine-tune the propagated model."""
    instruct: ModelRef = field(metadata={"help": "the original instruct model that answers the prompts"})
    model: Path | None = field(default=None, metadata={
        "help": "the propagated model to fine-tune (`lingraft propagate`); needed unless train.enabled is false"})
    out: OutputPath = field(metadata={"help": "output folder (generation resumes from it)"})
    prompts: list[PromptSourceConfig] = field(metadata={
        "help": "instruction prompt files (JSONL or JSON array); see prompts[].prompt_field"})
    language: str = field(default="ru", metadata={"help": "picks the script and copy-phrasing defaults"})
    seed: int = 0
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    script: ScriptFilter = field(default_factory=ScriptFilter)
    loop: LoopFilter = field(default_factory=LoopFilter)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    copy: CopyConfig = field(default_factory=CopyConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    train: CalibrateTrainSettings = field(default_factory=CalibrateTrainSettings)

    def __post_init__(self) -> None:
        require(Path(self.out) != Path("."), "out", "name a folder of its own, not '.'")
        require(bool(self.prompts), "prompts", "give at least one prompt file")
        names = [p.name for p in self.prompts]
        require(len(set(names)) == len(names), "prompts", f"source names clash ({names}); set prompts[].name")
        require(self.model is not None or not self.train.enabled, "model",
                "is required unless train.enabled is false")
        preset = LANGUAGE_PRESETS.get(self.language)
        require(preset is not None or not self.script.enabled or bool(self.script.scripts or self.script.ranges),
                "script.scripts", f"no preset for language {self.language!r}: set script.scripts or script.ranges")
        require(preset is not None or self.copy.corpus is None or bool(self.copy.phrasings), "copy.phrasings",
                f"no preset for language {self.language!r}: set copy.phrasings")

    def scripts(self) -> list[str]:
        if self.script.scripts or self.script.ranges:
            return list(self.script.scripts)
        return list(LANGUAGE_PRESETS[self.language].scripts)

    def copy_phrasings(self) -> list[str]:
        return list(self.copy.phrasings or LANGUAGE_PRESETS[self.language].copy_phrasings)

"""Config of `lingraft init`, its translation resources included (light: no torch/transformers import,
so `lingraft --help` stays fast)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.config import ConfigError, DatasetRef, ModelRef, OutputPath, build_config, require
from lingraft.errors import LingraftError

InitMethod = Literal["distill", "mean", "weighted-mean", "transtokenize", "random"]
ResourceKind = Literal["auto", "parallel", "dictionary"]
# Methods that run the original model over a corpus.
CORPUS_METHODS = ("distill",)


@dataclass
class TranslationResourceConfig:
    """One translation resource: a JSONL(.gz/.xz/.zst) file of parallel sentences or dictionary entries."""
    path: Path
    old_field: str = field(metadata={"help": "field in the old model's language (e.g. en)"})
    new_field: str = field(metadata={"help": "field in the new tokenizer's language"})
    kind: ResourceKind = field(default="auto", metadata={
        "help": "parallel | dictionary; auto: a list in new_field means dictionary"})
    max_pairs: int | None = field(default=None, metadata={
        "help": "read a seeded random sample of this many records (default: all)"})
    max_glosses: int = field(default=3, metadata={"help": "dictionary: glosses read per headword"})
    max_phrase_words: int = field(default=3, metadata={
        "help": "dictionary: skip entries with more words on a side (explanations, not translations)"})
    markup: Literal["none", "gettext"] = field(default="none", metadata={
        "help": "gettext: strip placeholders (%s, {0}), escapes (\\n) and accelerators (_File, &File)"})
    name: str = ""

    def __post_init__(self) -> None:
        require(bool(self.old_field), "old_field", "name the field in the old model's language")
        require(bool(self.new_field), "new_field", "name the field in the new tokenizer's language")
        require(self.old_field != self.new_field, "new_field", f"must differ from old_field ({self.old_field!r})")
        require(self.max_pairs is None or self.max_pairs >= 1, "max_pairs", f"must be >= 1, got {self.max_pairs}")
        require(self.max_glosses >= 1, "max_glosses", f"must be >= 1, got {self.max_glosses}")
        require(self.max_phrase_words >= 1, "max_phrase_words", f"must be >= 1, got {self.max_phrase_words}")
        if not self.name:
            self.name = Path(self.path).name.split(".")[0]


def parse_resource_spec(spec: str, old_field: str = "", new_field: str = "") -> TranslationResourceConfig:
    """A command-line resource: ``PATH[,key=value...]``, e.g.
    ``dict.jsonl.xz,kind=dictionary,max_glosses=2`` or ``ui.jsonl,markup=gettext,old_field=en``.

    `old_field`/`new_field` are defaults (the stage's language codes) that the spec may override.
    """
    path, *options = [part.strip() for part in spec.split(",")]
    dotted = [f"path={json.dumps(path)}"]
    dotted += [f"{key}={value}" for key, value in (("old_field", old_field), ("new_field", new_field)) if value]
    for option in options:
        if "=" not in option:
            raise LingraftError(f"{spec}: resource option {option!r} must look like key=value")
        dotted.append(option)
    try:
        return build_config(TranslationResourceConfig, dotted=dotted)
    except ConfigError as exc:
        if not str(exc).endswith("required key is missing"):
            raise
        raise ConfigError(f"{exc} (--old-language and --new-language set it for every resource)") from None


@dataclass
class InitConfig:
    """Swap a model's vocabulary for a new tokenizer's and initialise the new embedding rows."""
    model: ModelRef = field(metadata={"help": "HF model folder, hub id, or .gguf file"})
    tokenizer: ModelRef = field(metadata={"help": "the new tokenizer (any spec load_tokenizer accepts)"})
    out: OutputPath = field(metadata={"help": "output folder: a HF model folder + token_map + manifest"})
    method: InitMethod = field(default="distill", metadata={
        "help": "how new rows are initialised: distill (mean rows refined by the original model over "
                "--corpus; the best measured, see BENCHMARKS.md), mean, weighted-mean, transtokenize, random"})
    old_tokenizer: ModelRef | None = field(default=None, metadata={
        "help": "the model's own tokenizer, when the model folder does not hold it"})
    pad_to_multiple: int = field(default=64, metadata={
        "help": "when the table grows, pad it to a multiple of this (1: none)"})
    shrink_table: bool = field(default=False, metadata={
        "help": "let the table shrink to the new vocabulary (padded); by default it keeps at least the "
                "checkpoint's rows, and new tokens fill its spare rows before it grows"})
    max_shard_gb: float = field(default=5.0, metadata={"help": "largest output shard in GB"})
    position_decay: float = field(default=0.8, metadata={
        "help": "weighted-mean: weight of the k-th old piece is position_decay**k"})
    whitespace_weight: float = field(default=0.1, metadata={
        "help": "weighted-mean: weight factor of a whitespace-only old piece"})
    seed: int = field(default=0, metadata={"help": "random: sampling seed"})
    translation_resource: list[str | TranslationResourceConfig] = field(default_factory=list, metadata={
        "help": "transtokenize: PATH[,key=value...] of a parallel or dictionary JSONL, e.g. "
                "pairs.jsonl or dict.jsonl.xz,kind=dictionary,max_glosses=2"})
    old_language: str = field(default="", metadata={
        "help": "transtokenize: the resources' field in the old model's language (default old_field)"})
    new_language: str = field(default="", metadata={
        "help": "transtokenize: the resources' field in the new tokenizer's language (default new_field)"})
    transtokenize_top_k: int = field(default=16, metadata={"help": "transtokenize: old tokens kept per row"})
    transtokenize_min_prob: float = field(default=0.02, metadata={
        "help": "transtokenize: drop translation probabilities below this"})
    corpus: list[DatasetRef] = field(default_factory=list, metadata={
        "help": "distill: text the original model reads (files or folders any reader accepts: the training mix)"})
    corpus_field: str = field(default="text", metadata={"help": "distill: JSON field of corpus holding the text"})
    # 768 windows read once with 8 head-fit epochs: init 1.089x B on UD against 1.116x for 384 windows
    # with 16 epochs, in about the same time; the head overfitted 384 (BENCHMARKS.md, session 16).
    distill_passages: int = field(default=768, metadata={
        "help": "distill: corpus windows read (a seeded sample of the first 50 x passages), and a tenth "
                "as many further windows that judge the head fit"})
    distill_passage_chars: int = field(default=400, metadata={"help": "distill: characters per window"})
    distill_copy_share: float = field(default=0.5, metadata={
        "help": "distill: share of windows whose first half is repeated after a blank line, so that "
                "the new rows learn to be copied (B's predictions on the repeat are near-certain)"})
    distill_steps: int = field(default=48, metadata={
        "help": "distill: Adam steps on the new input rows (0: keep the mean rows as inputs)"})
    distill_batch_size: int = field(default=8, metadata={"help": "distill: windows per step"})
    distill_teacher_cache_gb: float = field(default=2.0, metadata={
        "help": "distill: memory for the original model's states at the aligned positions, kept so that a "
                "window read again needs no second teacher pass (beyond it, passes are repeated)"})
    distill_lr: float = field(default=2.0e-3, metadata={"help": "distill: input-row learning rate"})
    head_fit_epochs: int = field(default=8, metadata={
        "help": "distill: passes of the head fit over the states (the best held-out epoch is kept)"})
    head_fit_lr: float = field(default=2.0e-3, metadata={
        "help": "distill: head-map learning rate after the warmup (then decayed to zero over the fit)"})
    # Off by default: a 2-epoch warmup lowered the fit's held-out loss on corpus windows (5.162 ->
    # 5.142 nats) but not bits per character on UD or Blok (BENCHMARKS.md, "The head map kept").
    head_fit_warmup_epochs: float = field(default=0.0, metadata={
        "help": "distill: epochs over which the head fit's learning rate rises linearly from zero (as many as "
                "the fit's, or more: it rises throughout)"})
    # 2,048 rather than 512: each step recomputes every learnt row through the d×d maps, so larger
    # steps are ~1.4× faster, and the held-out curve is smoother (BENCHMARKS.md).
    head_fit_batch_size: int = field(default=2048, metadata={"help": "distill: positions per head-fit step"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "distill: where the original model runs (auto: the first GPU when one is visible)"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "distill: compute dtype of the model's passes and the head fit's steps (auto: bf16 on GPU, "
                "fp32 on CPU); the learnt rows, and the held-out loss that picks the head fit's epoch, stay fp32"})
    eval_text: DatasetRef | None = field(default=None, metadata={
        "help": "held-out text file: report bits per character of the original and the new model"})
    eval_text_field: str = field(default="text", metadata={"help": "JSON field of eval_text holding the text"})
    eval_max_docs: int = field(default=300, metadata={"help": "score at most this many documents of eval_text"})
    eval_max_length: int = field(default=1024, metadata={"help": "tokens per scoring window"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(self.pad_to_multiple >= 1, "pad_to_multiple", f"must be >= 1, got {self.pad_to_multiple}")
        require(self.max_shard_gb > 0, "max_shard_gb", f"must be > 0, got {self.max_shard_gb}")
        require(0 < self.position_decay <= 1, "position_decay", f"must be in (0, 1], got {self.position_decay}")
        require(0 <= self.whitespace_weight <= 1, "whitespace_weight",
                f"must be in [0, 1], got {self.whitespace_weight}")
        require(self.method == "transtokenize" or not self.translation_resource, "translation_resource",
                f"only used by --method transtokenize, not {self.method!r}")
        require(self.method != "transtokenize" or bool(self.translation_resource), "translation_resource",
                "--method transtokenize needs at least one translation resource")
        # A command-line spec string becomes a full resource config; the language fields default
        # to old_language / new_language so they need not be repeated per resource.
        self.translation_resource = [
            parse_resource_spec(r, self.old_language, self.new_language) if isinstance(r, str) else r
            for r in self.translation_resource]
        require(self.method in CORPUS_METHODS or not self.corpus, "corpus",
                f"only used by --method {'/'.join(CORPUS_METHODS)}, not {self.method!r}")
        require(self.method not in CORPUS_METHODS or bool(self.corpus), "corpus",
                f"--method {self.method} reads the original model's predictions over a corpus: give --corpus "
                "(e.g. the training mix), or choose --method mean")
        for name in ("distill_passages", "distill_passage_chars", "distill_batch_size", "head_fit_batch_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.distill_steps >= 0, "distill_steps", f"must be >= 0, got {self.distill_steps}")
        require(self.distill_teacher_cache_gb >= 0, "distill_teacher_cache_gb",
                f"must be >= 0, got {self.distill_teacher_cache_gb}")
        require(0 <= self.distill_copy_share <= 1, "distill_copy_share",
                f"must be in [0, 1], got {self.distill_copy_share}")
        require(self.head_fit_epochs >= 1, "head_fit_epochs", f"must be >= 1, got {self.head_fit_epochs}")
        require(self.head_fit_warmup_epochs >= 0, "head_fit_warmup_epochs",
                f"must be >= 0, got {self.head_fit_warmup_epochs}")
        require(self.distill_lr > 0 and self.head_fit_lr > 0, "distill_lr", "learning rates must be > 0")
        require(self.transtokenize_top_k >= 1, "transtokenize_top_k", f"must be >= 1, got {self.transtokenize_top_k}")
        require(0 <= self.transtokenize_min_prob < 1, "transtokenize_min_prob",
                f"must be in [0, 1), got {self.transtokenize_min_prob}")
        require(self.eval_max_docs >= 1, "eval_max_docs", f"must be >= 1, got {self.eval_max_docs}")
        require(self.eval_max_length >= 1, "eval_max_length", f"must be >= 1, got {self.eval_max_length}")

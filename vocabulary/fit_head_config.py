"""Config of `lingraft fit-head` (light: no torch/transformers import, so `lingraft --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lingraft.config import DatasetRef, ModelRef, OutputPath, require


@dataclass(frozen=True)
class FitSchedule:
    epochs: int
    lr: float
    warmup_epochs: float


# A warm start continues a fitted map: fewer epochs at a lower rate reach the held-out loss a fit
# from the first-piece rows reaches in 16, but only with a warmup: without one Adam's first steps
# throw the map off (BENCHMARKS.md, "The head map kept").
WARM = FitSchedule(epochs=6, lr=1.0e-3, warmup_epochs=2.0)
COLD = FitSchedule(epochs=16, lr=2.0e-3, warmup_epochs=0.0)


@dataclass
class FitHeadConfig:
    """Refit an adapted model's learnt head rows on the states its own body and input rows produce.

    `lingraft init --method distill` fits the new head rows on the states of the *initial* input
    rows; training moves the input rows, and with them the states the head reads. This refits
    the same shared head map (vocabulary/distill_math.HeadMap) on the trained model's states.
    """
    model: ModelRef = field(metadata={
        "help": "the adapted model: an untied head and a token map (`lingraft init --method distill`, trained, exported)"})
    base: ModelRef = field(metadata={
        "help": "the original model: its tokenizer and head give each new row its first-piece and mean features"})
    corpus: list[DatasetRef] = field(metadata={"help": "text the model reads (files or folders: the training mix)"})
    out: OutputPath = field(metadata={"help": "output folder: the model with its learnt head rows refitted"})
    corpus_field: str = field(default="text", metadata={"help": "JSON field of corpus holding the text"})
    passages: int = field(default=384, metadata={
        "help": "corpus windows read (a seeded sample of the first 50 x passages), and a tenth as many further "
                "windows that judge the fit (init's, with init's settings: text neither fit reads)"})
    passage_chars: int = field(default=400, metadata={"help": "characters per window"})
    copy_share: float = field(default=0.5, metadata={
        "help": "share of windows whose first half is repeated after a blank line (as init's distillation)"})
    # Off by default: from init's map, 6 epochs reached a lower held-out loss on corpus windows than
    # 16 from the first-piece rows, in a third of the time, but A's bits per character on UD and
    # Blok did not move from the trained model's (BENCHMARKS.md, "The head map kept").
    warm_start: bool = field(default=False, metadata={
        "help": "start the map from the one stored with the model (head_map.safetensors, written by init --method "
                "distill and by fit-head) when there is one: about 3x faster, and measured not to carry over to "
                "held-out text as well as a fit from the first-piece rows (the default)"})
    epochs: int | None = field(default=None, metadata={
        "help": f"passes over the states (the best held-out epoch is kept; default {WARM.epochs} from a stored map, "
                f"{COLD.epochs} from the first-piece rows)"})
    lr: float | None = field(default=None, metadata={
        "help": f"head-map learning rate after the warmup, then decayed to zero (default {WARM.lr:g} from a stored "
                f"map, {COLD.lr:g} from the first-piece rows)"})
    warmup_epochs: float | None = field(default=None, metadata={
        "help": f"epochs over which the learning rate rises linearly from zero (default {WARM.warmup_epochs:g} from "
                f"a stored map, {COLD.warmup_epochs:g} from the first-piece rows; as many as the fit's, or more: "
                "it rises throughout)"})
    batch_size: int = field(default=2048, metadata={"help": "positions per Adam step"})
    state_batch_size: int = field(default=8, metadata={"help": "windows per forward pass while collecting states"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "where the model runs (auto: the first GPU when one is visible)"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "compute dtype of the forward passes and the fit's steps (auto: bf16 on GPU, fp32 on CPU); "
                "the rows, and the held-out loss that picks the epoch, stay fp32"})
    seed: int = 0
    max_shard_gb: float = field(default=5.0, metadata={"help": "largest output shard in GB"})
    trust_remote_code: bool = False

    def schedule(self, warm: bool) -> FitSchedule:
        """The epochs, rate and warmup given, the rest by where the map starts."""
        default = WARM if warm else COLD
        warmup = default.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs
        return FitSchedule(self.epochs or default.epochs, self.lr or default.lr, warmup)

    def __post_init__(self) -> None:
        require(bool(self.corpus), "corpus", "give the text the model reads (e.g. the training mix)")
        for name in ("passages", "passage_chars", "batch_size", "state_batch_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs",
                f"must be >= 0, got {self.warmup_epochs}")
        require(0 <= self.copy_share <= 1, "copy_share", f"must be in [0, 1], got {self.copy_share}")
        require(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.max_shard_gb > 0, "max_shard_gb", f"must be > 0, got {self.max_shard_gb}")

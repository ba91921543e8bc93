"""Typed configuration of embedding-only training (`lingraft train`, `launch/train.py`).

Kept free of torch/transformers imports so that `lingraft --help` and config validation
stay fast and every config error is reported before any process is launched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lingraft.config import RUNTIME_ONLY, ModelRef, OutputPath, require

Trainable = Literal["embeddings", "new_rows", "full", "layers", "lora"]
# local: one process, plain PyTorch; deepspeed: ZeRO 1/2/3; fsdp: PyTorch FSDP2 (`fully_shard`).
Backend = Literal["local", "deepspeed", "fsdp"]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100          # the LEP default
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0           # 0 disables clipping

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "must be > 0")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                "expected two values in [0, 1)")
        require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3
    resume: bool = True              # continue from the newest checkpoint in out_dir, if any

    def __post_init__(self) -> None:
        require(self.every_steps > 0, "checkpoint.every_steps", "must be > 0")
        require(self.keep_last > 0, "checkpoint.keep_last", "must be > 0")


@dataclass
class LogConfig:
    every_steps: int = 1
    tensorboard: bool = True
    wandb_project: str | None = None
    plot: bool = True                # loss-curve PNG at the end of the run
    peak_tflops: float | None = None  # per device, for MFU; known GPUs are detected

    def __post_init__(self) -> None:
        require(self.every_steps > 0, "log.every_steps", "must be > 0")
        require(self.peak_tflops is None or self.peak_tflops > 0, "log.peak_tflops", "must be > 0")


@dataclass
class LaunchConfig:
    """How `lingraft train` starts the processes (launch/train.py ignores this section)."""
    launcher: Literal["auto", "none", "deepspeed", "torchrun", "mpirun"] = "auto"
    nproc_per_node: int = 1
    hostfile: Path | None = None
    ds_launcher: Literal["pdsh", "openmpi", "slurm"] = "pdsh"
    master_addr: str | None = None
    master_port: int = 29500
    dist_timeout_s: int = 600        # an unreachable master fails after this, never hangs

    def __post_init__(self) -> None:
        require(self.nproc_per_node > 0, "launch.nproc_per_node", "must be > 0")
        require(0 < self.master_port < 65536, "launch.master_port", "must be a TCP port")
        require(self.dist_timeout_s > 0, "launch.dist_timeout_s", "must be > 0")


def parse_id_ranges(spec: str) -> list[tuple[int, int]]:
    """``"32000:48000,5,7"`` -> [(32000, 48000), (5, 6), (7, 8)] (half-open ranges)."""
    ranges = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        lo, _, hi = part.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad id range {part!r} (expected START:END or ID)")
        start, end = int(lo), int(hi) if hi else int(lo) + 1
        if end <= start:
            raise ValueError(f"empty id range {part!r}")
        ranges.append((start, end))
    return ranges


@dataclass
class AnchorConfig:
    """loss = CE + weight * KL(p_model ‖ p_ref) against a frozen reference (train/anchor.py says where it applies)."""
    weight: float = 0.0                      # 0: no anchor, no reference loaded
    reference: Path | None = None            # default: `model` as it is before training
    tokens: Literal["all", "shared"] = "all"  # all: same vocabulary; shared: tokens both vocabularies have
    shared_ids: str | None = None            # tokens=shared: ids that kept their id, e.g. 0:49152
    token_map: Path | None = None            # tokens=shared: default <model>/token_map.safetensors

    def __post_init__(self) -> None:
        require(self.weight >= 0 and self.weight != float("inf"), "anchor.weight", "must be finite and >= 0")
        for key in ("shared_ids", "token_map"):
            require(self.tokens == "shared" or getattr(self, key) is None, f"anchor.{key}",
                    "only used with anchor.tokens=shared")
        require(self.shared_ids is None or self.token_map is None, "anchor.shared_ids",
                "give either shared_ids or token_map, not both")
        if self.shared_ids is not None:
            try:
                parse_id_ranges(self.shared_ids)
            except ValueError as exc:
                require(False, "anchor.shared_ids", str(exc))


@dataclass
class DistillConfig:
    """loss = ce_weight * CE + weight * KL(p_teacher ‖ p_model) at positions where the teacher's
    tokenisation and the model's end a token at the same byte, + chunk_weight * the Bernoulli KL
    between the two models' likelihoods of the model's next token where it ends on such a byte
    too (train/distill.py). Any `trainable` mode: the new rows (new_rows, embeddings) learn to be
    read as B reads the old pieces, adapters (lora) let the body learn to read them."""
    weight: float = 0.0                      # 0 (and chunk_weight 0): no distillation, no teacher loaded
    ce_weight: float = 1.0                   # 1: beside the cross-entropy; 0: instead of it
    chunk_weight: float = 0.0                # likelihood matching: the only term that reaches new head rows
    teacher: Path | None = None              # default: the source model named in <model>/manifest.json (init)
    teacher_tokenizer: ModelRef | None = None  # default: the old tokenizer init used, else the teacher folder
    shared_ids: str | None = None            # ids both vocabularies share as they are, e.g. 0:49152
    token_map: Path | None = None            # default: <model>/token_map.safetensors (kept/special rows)

    @property
    def enabled(self) -> bool:
        """Whether the teacher is loaded at all."""
        return self.weight > 0 or self.chunk_weight > 0

    def __post_init__(self) -> None:
        for key in ("weight", "ce_weight", "chunk_weight"):
            value = getattr(self, key)
            require(value >= 0 and value != float("inf"), f"distill.{key}", "must be finite and >= 0")
        require(self.shared_ids is None or self.token_map is None, "distill.shared_ids",
                "give either shared_ids or token_map, not both")
        if self.shared_ids is not None:
            try:
                parse_id_ranges(self.shared_ids)
            except ValueError as exc:
                require(False, "distill.shared_ids", str(exc))


@dataclass
class LoraConfig:
    """trainable=lora: low-rank adapters (peft) on `target_modules` of the chosen blocks (train/lora.py)."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_DEFAULT_TARGETS))
    layers: list[int] | None = None    # block indexes, negative from the end ([0, -1]: first and last); None: all
    train_tables: bool = False         # embeddings and LM head train in full alongside the adapters
    keep_adapter: bool = True          # `lingraft export` also writes the un-merged adapter (<out>/adapter)

    def __post_init__(self) -> None:
        require(self.r > 0, "lora.r", "must be > 0")
        require(self.alpha > 0, "lora.alpha", "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        require(bool(self.target_modules), "lora.target_modules", "name at least one module (e.g. q_proj)")
        require(self.layers is None or bool(self.layers), "lora.layers", "give block indexes, or leave unset for all")


# Attention and MLP projections of Llama-family blocks (Llama, Mistral, Qwen, Gemma, SmolLM).
LORA_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FrozenBodyConfig:
    """trainable=embeddings/new_rows under fsdp: how each rank holds the frozen transformer.

    It never steps, so it is kept in the compute dtype with no fp32 master copy, and only the
    tables (and their optimizer state) are sharded over all ranks (train/frozen_body.py).
    Under ZeRO-3, `replicate` keeps the frozen parameters gathered once fetched (persistent).
    ZeRO-1/2 always replicate it (only what trains enters their partitions), as `replicate` says.
    """
    # node: sharded within a node, replicated across nodes (HSDP); the load reads a rank's shard only.
    # replicate: a full copy per rank, no collective ever touches it.
    placement: Literal["node", "replicate"] = "node"
    # node: gathered in forward and kept for backward, so one all-gather per block per micro-batch
    # instead of two; costs the whole body per rank at peak (switch off when that does not fit).
    keep_gathered: bool = True


@dataclass
class TrainConfig:
    model: Path = field(metadata={"help": "HF checkpoint folder (e.g. the output of `lingraft init`)"})
    data: Path = field(metadata={"help": "packed dataset folder (`lingraft prep pack`)"})
    out_dir: OutputPath = field(metadata={"help": "run folder: checkpoints, logs, plots"})
    max_steps: int = field(metadata={"help": "optimizer steps"})
    backend: Backend = field(default="deepspeed", metadata={"help": "training engine"})
    zero_stage: int = field(default=2, metadata={
        "help": "DeepSpeed ZeRO stage (1, 2, 3); backend=deepspeed only"})
    ds_config: Path | None = field(default=None, metadata={
        "help": "DeepSpeed template (default: the shipped zero<stage>.json, package lingraft.ds_configs)"})
    trainable: Trainable = field(default="embeddings", metadata={"help": "what carries gradients"})
    trainable_modules: list[str] = field(default_factory=list, metadata={
        "help": "module names for trainable=layers, e.g. model.layers.0 (tables are always included)"})
    token_map: Path | None = field(default=None, metadata={
        "help": "token_map.safetensors telling new rows apart (default: <model>/token_map.safetensors)"})
    new_token_ids: str | None = field(default=None, metadata={"help": "explicit new rows, e.g. 32000:48000"})
    micro_batch_size: int = 1
    grad_accum_steps: int = 1
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={"help": "auto: bf16 on GPU, fp32 on CPU"})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attention: Literal["auto", "flash_attention_2", "flex_attention", "sdpa"] = "auto"
    doc_mask: bool = field(default=True, metadata={"help": "stop attention at document boundaries"})
    copy_share: float = field(default=0.0, metadata={
        "help": "share of each micro-batch's samples (its first ones, on every rank) read as copy tasks: "
                "the first half, then again"})
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # How to start the processes, not what they compute: a new Slurm job brings a new hostfile and
    # master address, and that must not discard a half-finished training run.
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={RUNTIME_ONLY: True})
    lora: LoraConfig = field(default_factory=LoraConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    frozen_body: FrozenBodyConfig = field(default_factory=FrozenBodyConfig)

    @property
    def copy_rows(self) -> int:
        """Samples of each micro-batch that are read as copy tasks (train/data.py)."""
        return round(self.copy_share * self.micro_batch_size)

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "max_steps", "must be > 0")
        require(self.zero_stage in (1, 2, 3), "zero_stage", "expected 1, 2 or 3")
        require(self.micro_batch_size > 0, "micro_batch_size", "must be > 0")
        require(0 <= self.copy_share <= 1, "copy_share", f"must be in [0, 1], got {self.copy_share}")
        require(abs(self.copy_share * self.micro_batch_size - self.copy_rows) < 1e-9, "copy_share",
                f"must give a whole number of samples per micro-batch ({self.copy_share} x {self.micro_batch_size})")
        require(self.grad_accum_steps > 0, "grad_accum_steps", "must be > 0")
        require(self.trainable != "layers" or bool(self.trainable_modules), "trainable_modules",
                "trainable=layers needs at least one module name")
        require(self.trainable == "layers" or not self.trainable_modules, "trainable_modules",
                f"only used with trainable=layers (trainable is {self.trainable!r})")
        require(self.trainable == "new_rows" or (self.new_token_ids is None and self.token_map is None),
                "new_token_ids" if self.new_token_ids is not None else "token_map", "only used with trainable=new_rows")
        require(self.new_token_ids is None or self.token_map is None, "new_token_ids",
                "give either new_token_ids or token_map, not both")
        if self.new_token_ids is not None:
            try:
                parse_id_ranges(self.new_token_ids)
            except ValueError as exc:
                require(False, "new_token_ids", str(exc))
        require(not (self.backend == "local" and self.launch.nproc_per_node > 1), "backend",
                "local runs one process; use deepspeed or fsdp for launch.nproc_per_node > 1")
        require(self.backend == "deepspeed" or self.ds_config is None, "ds_config",
                f"only used with backend=deepspeed (backend is {self.backend!r})")
        require(self.ds_config is None or self.ds_config.is_file(), "ds_config", f"{self.ds_config}: file not found")
        require(self.distill.enabled or self.distill.ce_weight == 1, "distill.ce_weight",
                "only used with distill.weight or chunk_weight > 0 (ce_weight 0 alone would train nothing)")

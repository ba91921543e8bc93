"""Load the checkpoint and decide what trains, before any engine wraps the model.

Freezing happens here, on the plain HF module: DeepSpeed and FSDP build their flat
buffers and optimizer partitions from `requires_grad` at wrap time, so anything frozen
later would still be sharded, reduced and given optimizer state.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lingraft.compute import resolve_device_dtype
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.train.config import TrainConfig, parse_id_ranges
from lingraft.train.model_parts import decoder_blocks, named_modules, table_modules
from lingraft.train.split_vocab import VocabSplit, split_model_tables

log = get_logger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    attention: str


def resolve_runtime(cfg: TrainConfig, local_rank: int = 0) -> Runtime:
    """Device, dtype and attention kernel: bf16 on GPU and fp32 on CPU unless told otherwise."""
    device, dtype = resolve_device_dtype(cfg.device, cfg.precision, local_rank)
    use_cuda = device.type == "cuda"
    attention = cfg.attention
    if attention == "auto":
        if use_cuda and importlib.util.find_spec("flash_attn") is not None:
            attention = "flash_attention_2"
        elif use_cuda:
            attention = "flex_attention"
        else:
            attention = "sdpa"
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise LingraftError("attention=flash_attention_2 but flash-attn is not installed (pip install lingraft[gpu])")
    return Runtime(device=device, dtype=dtype, attention=attention)


def weights_dtype(cfg: TrainConfig, runtime: Runtime) -> torch.dtype:
    """The dtype the module's weights are held in (runtime.dtype is the compute dtype).

    DeepSpeed's bf16 mode takes a bf16 module and keeps the fp32 master weights inside its
    optimizer; the local backend (autocast) and FSDP2 (a mixed-precision policy) keep fp32
    weights themselves and only compute in bf16.
    """
    return runtime.dtype if cfg.backend == "deepspeed" else torch.float32


def load_model(path: Path, runtime: Runtime, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=runtime.attention)
    model.config.use_cache = False
    return model.to(runtime.device)


def token_map_path(cfg_token_map: Path | None, model_dir: Path) -> Path:
    """The token map given in the config, else the one `lingraft init` saved with the model."""
    from lingraft.vocabulary.token_map import TOKEN_MAP_NAME
    return Path(cfg_token_map or Path(model_dir) / TOKEN_MAP_NAME)


def copies_old_row(tmap) -> torch.Tensor:
    """(new_vocab,) bool: rows of provenance kept/special, i.e. taken over from the old vocabulary."""
    from lingraft.vocabulary.token_map import PROVENANCES
    codes = torch.tensor([PROVENANCES.index("kept"), PROVENANCES.index("special")], dtype=torch.uint8)
    return torch.isin(tmap.provenance, codes)


def new_token_ids(cfg: TrainConfig, vocab_size: int) -> torch.Tensor:
    """The rows that train under trainable=new_rows: an explicit range or the token map's provenance."""
    if cfg.new_token_ids is not None:
        ids = torch.cat([torch.arange(lo, hi) for lo, hi in parse_id_ranges(cfg.new_token_ids)])
    else:
        from lingraft.vocabulary.token_map import TokenMap
        path = token_map_path(cfg.token_map, cfg.model)
        if not path.is_file():
            raise LingraftError(f"trainable=new_rows: {path} not found; give token_map or new_token_ids")
        tmap = TokenMap.load(path)
        # Fewer tokens than rows is normal: `lingraft init` pads the tables to a multiple of 64,
        # and padding rows, which no token reaches, stay frozen with the old ones.
        if tmap.new_vocab > vocab_size:
            raise LingraftError(f"{path}: token map covers {tmap.new_vocab} tokens, the model has only "
                                f"{vocab_size} rows (a map for another model?)")
        ids = torch.nonzero(~copies_old_row(tmap)).flatten()
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise LingraftError(f"new_token_ids: id {int(ids.max())} is outside the vocabulary of {vocab_size}")
    return ids


def apply_trainable(model: nn.Module, cfg: TrainConfig) -> VocabSplit | None:
    """Set `requires_grad` for cfg.trainable; for new_rows, split the tables. Returns the split."""
    split = None
    if cfg.trainable == "full":
        model.requires_grad_(True)
        return None
    if cfg.trainable == "lora":
        from lingraft.train.lora import apply_lora
        apply_lora(model, cfg.lora)     # in place: adapters (and tables, if asked) are all that trains
        return None
    model.requires_grad_(False)
    if cfg.trainable == "new_rows":
        vocab = model.get_input_embeddings().num_embeddings
        split = split_model_tables(model, new_token_ids(cfg, vocab))
        # The split tables' only Parameter is the new rows; the old rows are buffers.
        for module in table_modules(model):
            module.requires_grad_(True)
        return split
    trainable = table_modules(model)
    if cfg.trainable == "layers":
        trainable += named_modules(model, cfg.trainable_modules)
    for module in trainable:
        module.requires_grad_(True)
    return split


def trainable_summary(model: nn.Module) -> dict[str, int]:
    def numel(p: torch.Tensor) -> int:
        return getattr(p, "ds_numel", p.numel())     # a ZeRO-3 parameter is empty outside forward

    total = sum(numel(p) for p in model.parameters())
    trained = sum(numel(p) for p in model.parameters() if p.requires_grad)
    frozen_buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith(".frozen"))
    return {"params_total": total, "params_trainable": trained, "frozen_table_rows_elems": frozen_buffers}


def enable_activation_checkpointing(model: nn.Module) -> None:
    # Non-reentrant: works when the block inputs do not require grad (frozen embeddings)
    # and composes with FSDP2 and torch.compile.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_blocks(model: nn.Module) -> None:
    """Compile each decoder block separately: small graphs, no recompiles across blocks."""
    for block in decoder_blocks(model):
        block.compile()


def build_model(cfg: TrainConfig, runtime: Runtime) -> tuple[nn.Module, VocabSplit | None]:
    """The model as every backend receives it: loaded, frozen/split, checkpointed, compiled."""
    from lingraft.train.frozen_body import hold_frozen_in, holds_frozen_body
    from lingraft.train.sharded_load import load_skeleton, streams_weights
    if streams_weights(cfg):      # FSDP2 / ZeRO-3: no rank ever holds the whole checkpoint
        model = load_skeleton(cfg, runtime, weights_dtype(cfg, runtime))
    else:
        model = load_model(cfg.model, runtime, weights_dtype(cfg, runtime))
    split = apply_trainable(model, cfg)
    if cfg.backend == "fsdp" and holds_frozen_body(cfg):
        hold_frozen_in(model, runtime.dtype)    # the FSDP2 master copy is for what trains
    if not any(p.requires_grad for p in model.parameters()):
        raise LingraftError(f"trainable={cfg.trainable}: nothing to train")
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.compile:
        compile_blocks(model)
    model.train()
    log.info("model %s: %s", Path(cfg.model).name, trainable_summary(model))
    return model, split

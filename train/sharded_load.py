"""Build the model without a full copy of the checkpoint per rank.

Under FSDP2 and ZeRO-3 the model is first built as a skeleton, and each rank then reads
only its own share of every tensor from the safetensors shards (plain reads of that byte
range, one tensor at a time: `lingraft.hf_folder.read_flat_range`):
- FSDP2: the skeleton's parameters live on the meta device. After `fully_shard` each
  DTensor says which rows this rank holds, and exactly those rows are read; parameters FSDP
  leaves alone (a replicated frozen body) are read whole (`fill_meta_parameters`).
- ZeRO-3: the skeleton is built under `deepspeed.zero.Init`, which partitions every
  parameter as it is created; a rank's partition is a contiguous range of the flattened
  tensor (`fill_zero3_partitions`).
new_rows: the two tables are read whole first, because the split needs every row (the old
rows become a replicated buffer anyway, train/split_vocab.py).

Every value is the checkpoint's, cast to the parameter's dtype, as from_pretrained gives it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.hf_folder import Checkpoint, TensorInfo, open_checkpoint, read_flat_range, storage_dtype
from lingraft.train.config import TrainConfig

# A cast (bf16 file -> fp32 master) goes through a staging buffer of at most this many
# elements, so a rank's peak stays its share plus one chunk.
CAST_CHUNK = 8 << 20


def streams_weights(cfg: TrainConfig) -> bool:
    """Engines whose ranks each hold a share of the weights. LoRA keeps the full load: peft
    wraps real modules (its adapters are built from the weights it wraps)."""
    sharded = cfg.backend == "fsdp" or (cfg.backend == "deepspeed" and cfg.zero_stage == 3)
    return sharded and cfg.trainable != "lora"


def load_skeleton(cfg: TrainConfig, runtime, dtype: torch.dtype) -> nn.Module:
    """The model before any engine wraps it: parameters on meta (FSDP2) or partitioned and
    filled (ZeRO-3); under new_rows the tables are real, ready to be split."""
    from transformers import AutoConfig
    ckpt = open_checkpoint(cfg.model, verify_checksums=False)   # headers only: every rank reads them
    config = AutoConfig.from_pretrained(cfg.model)
    zero3 = cfg.backend == "deepspeed"
    model = _skeleton(config, runtime, dtype, _zero_init_config(cfg, runtime, config.hidden_size) if zero3 else None)
    if cfg.trainable == "new_rows":
        load_whole_tables(model, ckpt, dtype, runtime.device)
    if zero3:
        fill_zero3_partitions(model, ckpt)
    return model


def _zero_init_config(cfg: TrainConfig, runtime, hidden_size: int) -> dict:
    from lingraft.train.ds_config import fill_ds_config
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return fill_ds_config(cfg, world, runtime.dtype == torch.bfloat16, hidden_size)


def _skeleton(config, runtime, dtype: torch.dtype, zero_config: dict | None) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    if zero_config is not None:
        import deepspeed
        # The dtype comes from the config's bf16 flag: an explicit `dtype` is misread off GPU
        # (DeepSpeed 0.19 picks bf16 for any dtype where fp16 is unsupported).
        where = _unsynced_zero_init(deepspeed)(config_dict_or_path=zero_config)
    else:
        # Buffers stay real: the rotary tables are computed, not stored in the checkpoint.
        where = init_empty_weights(include_buffers=False)
    # Import the model's module first: zero.Init patches torch, and imports under it break.
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    with no_init_weights(), where:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=runtime.attention)
    model.tie_weights()      # no_init_weights skips the tying that weight initialisation does
    model.config.use_cache = False
    return model


def _unsynced_zero_init(deepspeed):
    """zero.Init without its per-parameter broadcast of rank 0's random values: every partition is
    read from the checkpoint right after, so the broadcast (the whole model, parameter by
    parameter, over the network) would be thrown away. DeepSpeed 0.19's `_zero_init_param` is
    convert + broadcast + partition; without that method the plain Init (with its broadcast) is used."""
    base = deepspeed.zero.Init
    if not hasattr(base, "_zero_init_param"):
        return base

    class UnsyncedInit(base):
        def _zero_init_param(self, param):
            self._convert_to_deepspeed_param(param)
            param.partition()

    return UnsyncedInit


def _info(ckpt: Checkpoint, name: str, shape: tuple[int, ...]) -> TensorInfo:
    info = ckpt.tensors.get(name)
    if info is None:
        raise LingraftError(f"{ckpt.folder}: no tensor {name} in the checkpoint (the model class expects it)")
    if tuple(info.shape) != tuple(shape):
        raise LingraftError(f"{ckpt.folder}: {name} is {list(info.shape)} in the checkpoint, the model "
                            f"expects {list(shape)}")
    return info


def read_into(info: TensorInfo, start: int, dest: torch.Tensor) -> torch.Tensor:
    """Fill `dest` with the flattened tensor's elements [start, start + dest.numel()): straight into
    its memory when the dtypes agree, else cast chunk by chunk. Returns `dest`."""
    host = dest if dest.device.type == "cpu" else torch.empty_like(dest, device="cpu")
    flat, count = host.view(-1), host.numel()
    if host.dtype == storage_dtype(info):
        read_flat_range(info, start, start + count, out=flat)
    else:
        for lo in range(0, count, CAST_CHUNK):
            hi = min(lo + CAST_CHUNK, count)
            flat[lo:hi].copy_(read_flat_range(info, start + lo, start + hi))
    if host is not dest:
        dest.copy_(host)
    return dest


def read_whole(ckpt: Checkpoint, name: str, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    return read_into(_info(ckpt, name, shape), 0, torch.empty(shape, dtype=dtype, device=device))


def load_whole_tables(model: nn.Module, ckpt: Checkpoint, dtype: torch.dtype, device: torch.device) -> None:
    """Replace the skeleton's embedding and LM head by the real tables (tied ones stay one tensor)."""
    names = {id(p): n for n, p in model.named_parameters()}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight

    def real(param: nn.Parameter) -> nn.Parameter:
        shape = tuple(getattr(param, "ds_shape", param.shape))   # ZeRO-3 parameters are empty until gathered
        return nn.Parameter(read_whole(ckpt, names[id(param)], shape, dtype, device), requires_grad=False)

    embed.weight = real(embed.weight)
    if head is not None:
        head.weight = embed.weight if tied else real(head.weight)


def _local_share(ckpt: Checkpoint, name: str, param: torch.Tensor, device: torch.device) -> torch.Tensor:
    """This rank's part of `param`: the rows its DTensor shard covers, or the whole tensor."""
    from torch.distributed.tensor import DTensor
    shape = tuple(param.shape)
    if not isinstance(param, DTensor):
        return read_whole(ckpt, name, shape, param.dtype, device)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    local_shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    if any(offset[1:]) or tuple(local_shape[1:]) != shape[1:]:
        raise LingraftError(f"{name}: sharded along {param.placements}; only row (dim 0) shards are loaded")
    row = math.prod(shape[1:])
    first = min(offset[0], shape[0])
    local = read_into(_info(ckpt, name, shape), first * row,
                      torch.empty(tuple(local_shape), dtype=param.dtype, device=device))
    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


@torch.no_grad()
def fill_meta_parameters(model: nn.Module, ckpt: Checkpoint, device: torch.device) -> int:
    """Give every meta parameter its real values (this rank's share only); returns how many.

    Parameters are replaced, not copied into: FSDP2 picks the new sharded tensors up at its
    lazy init (`reset_sharded_param`). Tied parameters stay one object.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    filled: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for key, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            if id(param) not in filled:
                filled[id(param)] = nn.Parameter(_local_share(ckpt, names[id(param)], param, device),
                                                 requires_grad=param.requires_grad)
            setattr(module, key, filled[id(param)])
    return len(filled)


@torch.no_grad()
def fill_zero3_partitions(model: nn.Module, ckpt: Checkpoint) -> int:
    """Copy each ZeRO-3 parameter's partition (a range of the flattened tensor) from the
    checkpoint into the rank's `ds_tensor`; returns how many parameters were filled."""
    count = 0
    for name, param in model.named_parameters():
        part = getattr(param, "ds_tensor", None)
        if part is None:          # a plain parameter (new_rows tables): real already
            continue
        size = param.partition_numel()
        start = size * torch.distributed.get_rank(group=param.ds_process_group)
        stop = min(start + size, param.ds_numel)
        if stop > start:
            info = _info(ckpt, name, tuple(param.ds_shape))
            read_into(info, start, part.data.narrow(0, 0, stop - start))
        count += 1
    return count

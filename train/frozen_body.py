"""The frozen transformer out of the way when only the tables train (embeddings, new_rows).

Before, FSDP2 sharded every block over all ranks in fp32 and all-gathered each block twice
per micro-batch (forward, then again for backward after resharding), and the old rows of
split tables were fp32 buffers on every rank. The body never steps, so now:
- it is held in the compute dtype, with no fp32 master copy (`hold_frozen_in`);
- FSDP2 (`shard_tables_only`): `placement=node` shards each block within a node only and
  replicates it across nodes (HSDP), kept gathered from forward to backward
  (`keep_gathered`); `placement=replicate` leaves the body out of FSDP altogether (a full
  copy per rank, no collective). Only the tables, their gradients and their AdamW state
  are sharded over all ranks.
- ZeRO-3 (`persist_frozen`): `placement=replicate` makes the frozen parameters persistent:
  gathered on first use and kept; ZeRO-3 still partitions everything while it steps, so
  they are gathered once per optimizer step. (With `node`, ZeRO-3 keeps its own
  partitioning over all ranks.)
"""
from __future__ import annotations

import os

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.train.config import TrainConfig
from lingraft.train.model_parts import decoder_blocks

FROZEN_BODY_MODES = ("embeddings", "new_rows")


def holds_frozen_body(cfg: TrainConfig) -> bool:
    return cfg.trainable in FROZEN_BODY_MODES


@torch.no_grad()
def hold_frozen_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen parameters and the split tables' frozen rows in `dtype`; trainable ones untouched.
    `.data` is replaced in place, so tied tensors stay one object (on meta this costs nothing)."""
    for param in model.parameters():
        if not param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
    for name, buffer in model.named_buffers():
        if name.endswith(".frozen") and buffer.is_floating_point() and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)


def ranks_per_node(cfg: TrainConfig, world_size: int) -> int:
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.launch.nproc_per_node))
    if per_node < 1 or world_size % per_node:
        raise LingraftError(f"frozen_body.placement=node: {world_size} ranks do not split into nodes of "
                            f"{per_node} (LOCAL_WORLD_SIZE / launch.nproc_per_node)")
    return per_node


def shard_tables_only(model: nn.Module, cfg: TrainConfig, runtime, world_size: int, policy) -> None:
    """FSDP2 wrapping for a frozen body: trainable tables sharded over all ranks under `policy`,
    frozen blocks sharded within a node (placement=node) or not wrapped at all (replicate)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    device_type = runtime.device.type
    frozen = {p for p in model.parameters() if not p.requires_grad}
    if cfg.frozen_body.placement == "node":
        per_node = ranks_per_node(cfg, world_size)
        node_mesh = init_device_mesh(device_type, (world_size // per_node, per_node),
                                     mesh_dim_names=("across_nodes", "within_node"))
        for block in decoder_blocks(model):
            fully_shard(block, mesh=node_mesh, reshard_after_forward=not cfg.frozen_body.keep_gathered,
                        mp_policy=MixedPrecisionPolicy(param_dtype=runtime.dtype))
            frozen -= set(block.parameters())
    # The root group holds the tables; what is left frozen at the root (final norm) is small
    # and stays a plain replicated tensor.
    fully_shard(model, mesh=init_device_mesh(device_type, (world_size,)), mp_policy=policy,
                ignored_params=frozen)


def persist_frozen(model: nn.Module, zero_optimizer, cfg: TrainConfig) -> int:
    """ZeRO-3, placement=replicate: frozen parameters stay gathered once fetched; returns how many.

    ZeRO-3 partitions every parameter when a step starts and gathers its persistent list again
    after it (stage3 `_post_step`), so the frozen ones join that list: one all-gather per
    optimizer step instead of one per block in every forward and backward.
    """
    if not (holds_frozen_body(cfg) and cfg.frozen_body.placement == "replicate"):
        return 0
    frozen = [p for p in model.parameters() if not p.requires_grad and hasattr(p, "ds_persist")]
    persistent = zero_optimizer.persistent_parameters      # the list the offload coordinator shares
    known = {id(p) for p in persistent}
    for param in frozen:
        param.ds_persist = True      # the coordinator never releases a persistent parameter
        if id(param) not in known:
            persistent.append(param)
    return len(frozen)

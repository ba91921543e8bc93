"""Can the chosen strategy hold the model at all? Checked in `lingraft train` before any launch.

Only the weights are counted, from the checkpoint's safetensors headers (nothing is loaded),
at 2 bytes each under bf16 and 4 under fp32: a lower bound on what a device needs (engines
may keep fp32 master copies on top), so a strategy this check refuses would certainly run out
of memory, after minutes of start-up on every node. Activations, gradients and optimizer
state come on top; the check does not guess at them. Backend=local and DeepSpeed ZeRO-1/2
hold every weight on every device; ZeRO-3 and FSDP2 shard them over the ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lingraft.errors import LingraftError
from lingraft.train.config import TrainConfig

GIB = 2**30


@dataclass(frozen=True)
class Placement:
    bytes_per_device: float
    what: str                # how the strategy holds the weights, for the message


def weights_placement(cfg: TrainConfig, params: int, world: int, bf16: bool) -> Placement:
    width, dtype = (2.0, "bf16") if bf16 else (4.0, "fp32")
    if cfg.backend == "local":
        return Placement(params * width, f"every weight in {dtype} on one device (backend=local)")
    if cfg.backend == "deepspeed" and cfg.zero_stage in (1, 2):
        return Placement(params * width, f"every weight in {dtype} on every device (ZeRO-{cfg.zero_stage} "
                                         "replicates the model)")
    engine = "ZeRO-3" if cfg.backend == "deepspeed" else "FSDP2"
    return Placement(params * width / world, f"{dtype} weights sharded over {world} ranks by {engine}")


def replicates(cfg: TrainConfig) -> bool:
    return cfg.backend == "local" or (cfg.backend == "deepspeed" and cfg.zero_stage in (1, 2))


def check_fits(cfg: TrainConfig, params: int, world: int, bf16: bool, device_bytes: int, device: str) -> None:
    """A clear error, naming the setting to change, if the weights alone exceed one device."""
    placement = weights_placement(cfg, params, world, bf16)
    if placement.bytes_per_device <= device_bytes:
        return
    if replicates(cfg):
        fix = "shard the weights: zero_stage=3 (backend=deepspeed) or backend=fsdp, over launch.nproc_per_node ranks"
    else:
        fix = "add ranks (launch.nproc_per_node, launch.hostfile)"
    need, have = placement.bytes_per_device / GIB, device_bytes / GIB
    raise LingraftError(f"model: {params / 1e9:.2f} B parameters need at least {need:.1f} GiB per device as "
                        f"{placement.what}, but one {device} holds {have:.1f} GiB; {fix}")


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in the checkpoint (tied tables once), from the safetensors headers."""
    import math

    from lingraft.hf_folder import open_checkpoint
    return sum(math.prod(info.shape) for info in open_checkpoint(model_dir, verify_checksums=False).tensors.values())


def device_memory(cfg: TrainConfig, ranks_per_node: int) -> tuple[int, str, bool]:
    """(bytes one rank's device holds, its name, whether it computes in bf16) as the ranks will see it."""
    import torch
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    if use_cuda and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"GPU ({props.name})", bf16
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(ranks_per_node, 1), f"CPU rank ({ranks_per_node} per node share the RAM)", bf16


def check_strategy_fits(cfg: TrainConfig, world: int) -> None:
    device_bytes, device, bf16 = device_memory(cfg, cfg.launch.nproc_per_node)
    check_fits(cfg, parameter_count(Path(cfg.model)), world, bf16, device_bytes, device)

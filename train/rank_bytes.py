"""What one rank holds, by kind: frozen weights, trainable weights, fp32 master copies,
gradients and optimizer state. For benchmarks and tests of the memory layout (the numbers
in BENCHMARKS.md), read off the tensors themselves rather than derived from a formula.
"""
from __future__ import annotations

import torch
from torch import nn


def tensor_bytes(tensor: torch.Tensor | None) -> int:
    """Bytes this rank stores for `tensor`: its DTensor shard, its ZeRO-3 partition plus
    whatever is gathered right now, or the tensor itself."""
    if tensor is None:
        return 0
    total = 0
    part = getattr(tensor, "ds_tensor", None)
    if part is not None:
        total += part.numel() * part.element_size()
    local = getattr(tensor, "_local_tensor", tensor)
    return total + local.numel() * local.element_size()


def _unique(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """This rank's bytes per kind. `master` is the fp32 copy an engine keeps beside a low-precision
    module (DeepSpeed's partitions, in the optimizer it wraps); FSDP2's sharded fp32 parameters
    are the trainable weights themselves. `grads` counts the gradients alive at the call:
    ZeRO-3's flat gradient partitions always, `.grad` tensors only inside a step."""
    params = _unique(model.parameters())
    frozen_rows = _unique(b for name, b in model.named_buffers() if name.endswith(".frozen"))
    out = {"frozen": sum(tensor_bytes(p) for p in params if not p.requires_grad)
           + sum(tensor_bytes(b) for b in frozen_rows),
           "trainable": sum(tensor_bytes(p) for p in params if p.requires_grad),
           "grads": sum(tensor_bytes(p.grad) for p in params if p.requires_grad),
           "master": 0, "optimizer_state": 0}
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)     # ZeRO wraps the client AdamW
        # ZeRO-3 / ZeRO-1,2 keep their fp32 partitions here (ZeRO-3 empties the client's
        # param_groups between steps).
        master = getattr(optimizer, "fp32_partitioned_groups_flat", None) or \
            getattr(optimizer, "single_partition_of_fp32_groups", None) or []
        out["master"] = sum(tensor_bytes(p) for p in _unique(master))
        out["grads"] += sum(tensor_bytes(p.grad) for p in _unique(master)) + \
            tensor_bytes(getattr(optimizer, "grad_partitions_flat_buffer", None))   # ZeRO-3 keeps it from init on
        out["optimizer_state"] = sum(tensor_bytes(v) for state in inner.state.values()
                                     for v in state.values() if torch.is_tensor(v))
    return out

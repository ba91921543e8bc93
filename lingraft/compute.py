"""Where a job computes and in what dtype: one rule for every stage that runs a model."""
from __future__ import annotations

import torch

from lingraft.errors import LingraftError

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device_dtype(device: str, precision: str, local_rank: int = 0) -> tuple[torch.device, torch.dtype]:
    """auto: this rank's GPU when one is visible; bf16 on GPU and fp32 on CPU unless told otherwise."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise LingraftError("device=cuda but no CUDA device is visible")
    dtype = PRECISIONS.get(precision, torch.bfloat16 if use_cuda else torch.float32)
    return (torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")), dtype

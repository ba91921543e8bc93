"""FLOPs of one training token when most of the transformer is frozen, and MFU.

A matmul ``y = x W`` costs F = 2·m·n per token forward. Its backward has two parts:
the activation gradient dL/dx (F again), needed whenever anything *before* it trains,
and the weight gradient dL/dW (F again), needed only if W trains. Attention's score and
value products have no weights; their backward is 2× their forward, needed whenever the
gradient flows through the layer.

So with only the tables training, every block still costs forward + activation-gradient
backward = 2F, not the usual 3F: embeddings-only training is predicted at roughly
(2·blocks + 3·head) / (3·blocks + 3·head) of a full step, about 0.7–0.8× for small and
mid-sized models, not the ~0 that counting "trainable parameters" would suggest.
"""
from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 peak per device (no sparsity), for MFU. Unknown devices need log.peak_tflops.
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size,
                   layers=config.num_hidden_layers, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, vocab=config.vocab_size)

    def block_matmul_flops(self) -> float:
        """Forward FLOPs per token of one block's projections (q, k, v, o, gated MLP)."""
        d, hd = self.hidden, self.head_dim
        attn = d * self.heads * hd * 2 + d * self.kv_heads * hd * 2
        mlp = 3 * d * self.intermediate
        return 2.0 * (attn + mlp)

    def attention_core_flops(self, attended_keys: float) -> float:
        """Forward FLOPs per token of QK^T and AV over `attended_keys` keys."""
        return 2.0 * 2.0 * attended_keys * self.heads * self.head_dim


@dataclass(frozen=True)
class GradPlan:
    """Which weights train: the tables, and which blocks (`full` = all blocks)."""
    embeddings: bool
    head_rows: int              # LM-head rows with a weight gradient (0: head frozen)
    blocks: frozenset[int]

    @classmethod
    def for_mode(cls, trainable: str, shape: ModelShape, blocks: frozenset[int] = frozenset(),
                 new_rows: int = 0) -> "GradPlan":
        if trainable == "full":
            return cls(True, shape.vocab, frozenset(range(shape.layers)))
        if trainable == "new_rows":
            return cls(True, new_rows, frozenset())
        return cls(True, shape.vocab, blocks if trainable == "layers" else frozenset())


def attended_keys_per_token(position_ids) -> float:
    """Mean keys a query attends to under the causal per-document mask.

    Position ids restart at each document, so query i of a document sees position_id + 1
    keys; with masking off the ids run over the whole sample and this is (seq + 1) / 2.
    """
    return float((position_ids.float() + 1).mean())


def training_flops_per_token(shape: ModelShape, plan: GradPlan, attended_keys: float) -> float:
    """Forward + backward FLOPs of one token under `plan`."""
    block_mm = shape.block_matmul_flops()
    block_attn = shape.attention_core_flops(attended_keys)
    head = 2.0 * shape.hidden * shape.vocab
    first_trainable = -1 if plan.embeddings else min(plan.blocks, default=shape.layers)
    total = shape.layers * (block_mm + block_attn) + head  # forward
    for block in range(shape.layers):
        if block >= first_trainable:                          # the gradient flows through it
            total += block_mm + 2.0 * block_attn
        if block in plan.blocks:
            total += block_mm
    if first_trainable < shape.layers:
        total += head                                         # dL/dhidden through the head
    total += 2.0 * shape.hidden * plan.head_rows              # dL/dW of the trained head rows
    return total


def peak_flops_per_device(configured_tflops: float | None) -> float | None:
    if configured_tflops is not None:
        return configured_tflops * 1e12
    import torch
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS_BF16.items():
        if key in name:
            return tflops * 1e12
    return None


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    return tokens_per_s_per_device * flops_per_token / peak if peak else None

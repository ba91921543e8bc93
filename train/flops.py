"""FLOPs of one training token when most of the transformer is frozen, and MFU.

A matmul ``y = x W`` costs F = 2·m·n per token forward. Its backward has two parts:
the activation gradient dL/dx (F again), needed whenever anything *before* it trains,
and the weight gradient dL/dW (F again), needed only if W trains. Attention's score and
value products have no weights; their backward is 2× their forward, needed whenever the
gradient flows through the layer.

So with only the tables training, every block still costs forward + activation-gradient
backward = 2F, not the usual 3F: embeddings-only training is predicted at roughly
(2·blocks + 3·head) / (3·blocks + 3·head) of a full step, about 0.7–0.8× for small and
mid-sized models, not the ~0 that counting "trainable parameters" would suggest. The other
way round, blocks before the first trainable one (LoRA or `layers` without the tables) need
no backward at all; LoRA's adapters add their own small matmuls (forward, activation and
weight gradient); and a KL anchor's reference adds one forward pass of its own model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Dense bf16 peak per device (no sparsity), by the name CUDA reports; the first match wins,
# so variants come before the family. Unknown devices (and an ambiguous bare "H100") need
# log.peak_tflops.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    (r"GH200", 989.0),
    (r"H100.*NVL", 835.0), (r"H100.*PCIe", 756.0), (r"H100.*(SXM|HBM3)", 989.0),
    (r"H200.*NVL", 835.0), (r"H200", 989.0),
    (r"H800.*PCIe", 756.0), (r"H800", 989.0),
    (r"GB200", 2500.0), (r"B200", 2250.0),
    (r"A100", 312.0),                       # SXM4 and PCIe, 40 and 80 GB alike
    (r"L40S", 362.0), (r"L40\b", 181.0), (r"L4\b", 121.0),
)


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

    def forward_flops(self, attended_keys: float) -> float:
        """One forward pass per token (a frozen reference model's cost)."""
        head = 2.0 * self.hidden * self.vocab
        return self.layers * (self.block_matmul_flops() + self.attention_core_flops(attended_keys)) + head


@dataclass(frozen=True)
class GradPlan:
    """Which weights train: the tables, and which blocks (`full` = all blocks)."""
    embeddings: bool
    head_rows: int              # LM-head rows with a weight gradient (0: head frozen)
    blocks: frozenset[int]      # blocks holding a trainable weight
    # Weight-gradient FLOPs per token over all blocks (2 x trainable matrix elements);
    # None: every weight of the `blocks` trains.
    block_weight_flops: float | None = None
    adapter_flops: float = 0.0  # forward FLOPs per token of extra matmuls (LoRA adapters)

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
    total += len(plan.blocks) * block_mm if plan.block_weight_flops is None else plan.block_weight_flops
    # Adapters sit in trainable blocks: forward and activation gradient (their dW is in block_weight_flops).
    total += 2.0 * plan.adapter_flops
    if first_trainable < shape.layers:
        total += head                                         # dL/dhidden through the head
    total += 2.0 * shape.hidden * plan.head_rows              # dL/dW of the trained head rows
    return total


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by the name CUDA reports, or None if it is not known exactly."""
    for pattern, tflops in PEAK_TFLOPS_BF16:
        if re.search(pattern, device_name):
            return tflops
    return None


def peak_flops_per_device(configured_tflops: float | None) -> float | None:
    """log.peak_tflops if set, else the known peak of this GPU; None (no MFU) on CPU or an unknown GPU."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    import torch
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    tflops = peak_tflops_for(name)
    if tflops is None:
        from lingraft.log import get_logger
        get_logger(__name__).warning("MFU: peak FLOPs of %r unknown; set log.peak_tflops to log MFU", name)
        return None
    return tflops * 1e12


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    return tokens_per_s_per_device * flops_per_token / peak if peak else None

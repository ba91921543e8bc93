"""Document masking stops attention at boundaries; FLOP counts of frozen-transformer training."""
from __future__ import annotations

import pytest
import torch

from tests.integration.train_tiny import make_tiny_llama
from lingraft.train.attention import attention_inputs, block_causal_mask
from lingraft.train.flops import GradPlan, ModelShape, attended_keys_per_token, training_flops_per_token


def test_block_causal_mask_is_block_diagonal():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(mask, expected.bool())


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_packed_document_sees_only_itself(tmp_path, implementation):
    from transformers import AutoModelForCausalLM
    if implementation == "flex_attention" and not torch.cuda.is_available():
        pytest.skip("flex attention needs a GPU for its compiled kernel")
    model = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "m"), attn_implementation=implementation)
    doc_a, doc_b = torch.randint(0, 96, (1, 7)), torch.randint(0, 96, (1, 9))
    packed = torch.cat([doc_a, doc_b], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(9)]).unsqueeze(0)
    alone = model(input_ids=doc_b).logits
    masked = model(input_ids=packed, **attention_inputs(positions, implementation, doc_mask=True)).logits[:, 7:]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
    unmasked = model(input_ids=packed, **attention_inputs(positions, implementation, doc_mask=False)).logits[:, 7:]
    assert not torch.allclose(unmasked, alone, atol=1e-3)


SHAPE = ModelShape(hidden=256, intermediate=688, layers=4, heads=4, kv_heads=4, head_dim=64, vocab=32000)


def test_embeddings_only_costs_forward_plus_activation_backward():
    keys = 256.5
    full = training_flops_per_token(SHAPE, GradPlan.for_mode("full", SHAPE), keys)
    emb = training_flops_per_token(SHAPE, GradPlan.for_mode("embeddings", SHAPE), keys)
    block, attn, head = SHAPE.block_matmul_flops(), SHAPE.attention_core_flops(keys), 2 * 256 * 32000
    assert full == pytest.approx(3 * 4 * (block + attn) + 3 * head)
    assert emb == pytest.approx(4 * (2 * block + 3 * attn) + 3 * head)
    assert 0.7 < emb / full < 0.95   # the prediction: backward still runs through frozen blocks
    new_rows = training_flops_per_token(SHAPE, GradPlan.for_mode("new_rows", SHAPE, new_rows=1000), keys)
    assert new_rows == pytest.approx(emb - 2 * 256 * (32000 - 1000))


def test_layers_mode_stops_the_backward_at_the_first_trainable_block():
    plan = GradPlan(embeddings=False, head_rows=0, blocks=frozenset({3}))
    only_last = training_flops_per_token(SHAPE, plan, 10.0)
    block, attn, head = SHAPE.block_matmul_flops(), SHAPE.attention_core_flops(10.0), 2 * 256 * 32000
    assert only_last == pytest.approx(4 * (block + attn) + head + (block + 2 * attn) + block + head)


def test_attended_keys_follow_document_positions():
    assert attended_keys_per_token(torch.tensor([[0, 1, 2, 0]])) == pytest.approx((1 + 2 + 3 + 1) / 4)


# -- the plan read off the model, and what the loop logs ----------------------------------------

def _tiny_plan(tmp_path, **overrides):
    from lingraft.train.loop import _grad_plan
    from lingraft.train.model_setup import build_model, resolve_runtime
    from tests.integration.train_tiny import tiny_config
    cfg = tiny_config(make_tiny_llama(tmp_path / "m"), tmp_path / "o", **overrides)
    model, split = build_model(cfg, resolve_runtime(cfg))
    shape = ModelShape.from_hf_config(model.config)
    return shape, _grad_plan(model, shape, split)


def test_lora_on_the_last_block_needs_no_backward_through_the_blocks_before_it(tmp_path):
    shape, plan = _tiny_plan(tmp_path, trainable="lora", **{"lora.layers": [-1], "lora.r": 4})
    assert plan == GradPlan(False, 0, frozenset({1}), plan.block_weight_flops, plan.adapter_flops)
    d, kv, inter, r = 64, 2 * 16, 128, 4              # tiny Llama: hidden 64, 2 kv heads of 16, MLP 128
    adapters = r * ((d + d) * 2 + (d + kv) * 2 + (d + inter) * 2 + (inter + d))   # q o k v gate up down
    assert plan.adapter_flops == plan.block_weight_flops == 2.0 * adapters
    keys = 8.0
    block, attn, head = shape.block_matmul_flops(), shape.attention_core_flops(keys), 2.0 * d * shape.vocab
    expected = 2 * (block + attn) + head + (block + 2 * attn) + head + 3 * 2.0 * adapters
    assert training_flops_per_token(shape, plan, keys) == pytest.approx(expected)


def test_layers_mode_counts_weight_gradients_of_the_named_modules_only(tmp_path):
    shape, plan = _tiny_plan(tmp_path, trainable="layers", trainable_modules=["model.layers.1.mlp"])
    assert plan.embeddings and plan.head_rows == shape.vocab and plan.blocks == frozenset({1})
    assert plan.block_weight_flops == 2.0 * 3 * 64 * 128 and plan.adapter_flops == 0


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-40GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA B200", 2250.0), ("NVIDIA GB200", 2500.0),
    ("NVIDIA H100", None), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_flops_by_exact_gpu_model(name, tflops):
    from lingraft.train.flops import peak_tflops_for
    assert peak_tflops_for(name) == tflops


def test_logged_mfu_counts_the_anchor_reference_forward(tmp_path):
    from lingraft.train.loop import train
    from lingraft.train.metrics_log import read_metrics
    from tests.integration.train_tiny import in_memory_source, packed_samples, tiny_config
    model = make_tiny_llama(tmp_path / "m")
    per_token = {}
    for name, weight in (("plain", 0.0), ("anchored", 1.0)):
        cfg = tiny_config(model, tmp_path / name, max_steps=1, **{"anchor.weight": weight, "log.peak_tflops": 1.0})
        train(cfg, in_memory_source)
        row = read_metrics(tmp_path / name)[0]
        per_token[name] = row["mfu"] * 1e12 / row["tokens_per_s"]      # one rank: FLOPs per token
    samples = packed_samples(4)                                          # step 1: 2 micro-batches of 2
    keys = sum(attended_keys_per_token(torch.stack([s["position_ids"] for s in samples[i:i + 2]]))
               for i in (0, 2)) / 2
    from transformers import AutoConfig
    reference = ModelShape.from_hf_config(AutoConfig.from_pretrained(model)).forward_flops(keys)
    assert per_token["anchored"] - per_token["plain"] == pytest.approx(reference, rel=1e-6)

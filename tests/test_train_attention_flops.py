"""Document masking stops attention at boundaries; FLOP counts of frozen-transformer training."""
from __future__ import annotations

import pytest
import torch

from tests.train_tiny import make_tiny_llama
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

"""KL anchor (train/anchor.py): the math on hand-made logits, the shared-token mask, and runs."""
from __future__ import annotations

import math

import pytest
import torch

from lingraft.config import ConfigError
from lingraft.errors import LingraftError
from tests.integration.train_tiny import in_memory_source, losses, make_tiny_llama, packed_samples, tiny_config
from lingraft.train.anchor import Anchor, SharedTokens, kl_to_reference, shared_from_token_map, shared_prefix_mask
from lingraft.train.metrics_log import read_metrics


def direct_kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(p ‖ q) of two softmaxes, written out term by term."""
    zp, zq = math.log(sum(map(math.exp, p_logits))), math.log(sum(map(math.exp, q_logits)))
    return sum(math.exp(a - zp) * ((a - zp) - (b - zq)) for a, b in zip(p_logits, q_logits))


# -- the KL on logits ------------------------------------------------------------------------

def test_kl_is_zero_when_model_equals_reference():
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kl_to_reference(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_matches_a_direct_computation_and_skips_masked_positions():
    p = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [1.0, -3.0, 0.5]]])
    q = torch.tensor([[[0.0, 1.0, 0.0], [5.0, -5.0, 0.0], [0.3, 0.2, 0.1]]])
    mask = torch.tensor([[True, False, True]])
    expected = (direct_kl([2.0, 0.5, -1.0], [0.0, 1.0, 0.0]) + direct_kl([1.0, -3.0, 0.5], [0.3, 0.2, 0.1])) / 2
    assert kl_to_reference(p, q, mask).item() == pytest.approx(expected, rel=1e-6)
    # The direction is KL(p_model ‖ p_ref), not the reverse.
    assert kl_to_reference(q, p, mask).item() != pytest.approx(expected, rel=1e-3)
    q_changed = q.clone()
    q_changed[0, 1] = torch.tensor([-9.0, 9.0, 3.0])          # a masked position: no effect
    assert kl_to_reference(p, q_changed, mask).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_reference(p, q, torch.zeros_like(mask)).item() == 0.0     # nothing to compare: 0, not NaN


def test_kl_on_shared_columns_renormalises_both_sides():
    # Model vocabulary of 4, reference of 3; model ids 0 and 3 are reference ids 2 and 0.
    p = torch.tensor([[[1.0, 7.0, -2.0, 0.5]]])
    q = torch.tensor([[[-1.0, 4.0, 2.0]]])
    kl = kl_to_reference(p, q, torch.ones(1, 1, dtype=torch.bool), torch.tensor([0, 3]), torch.tensor([2, 0]))
    assert kl.item() == pytest.approx(direct_kl([1.0, 0.5], [2.0, -1.0]), rel=1e-6)
    with pytest.raises(ValueError, match="vocabularies differ"):
        kl_to_reference(p, q, torch.ones(1, 1, dtype=torch.bool))


def test_kl_gradient_reaches_the_model_logits_only():
    p = torch.randn(1, 4, 6, requires_grad=True)
    q = torch.randn(1, 4, 6, requires_grad=True)
    kl_to_reference(p, q, torch.ones(1, 4, dtype=torch.bool)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and q.grad is None


def test_shared_prefix_mask_stops_at_the_first_new_token_of_each_document():
    is_shared = torch.tensor([[True, True, False, True, True, True, True, False]])
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])     # two documents of 4 tokens
    assert shared_prefix_mask(is_shared, position_ids, doc_mask=True).tolist() == \
        [[True, True, False, False, True, True, True, False]]
    # Without document masking the second document attends to the first one's new token.
    assert shared_prefix_mask(is_shared, position_ids, doc_mask=False).tolist() == [[True, True] + [False] * 6]


def test_shared_tokens_from_a_token_map(tmp_path):
    from lingraft.vocabulary.token_map import TokenMap
    rows = [{0: 1.0}, {2: 1.0}, {0: 0.5, 1: 0.5}, {}, {3: 1.0}, {2: 1.0}]
    provenance = ["kept", "kept", "mean", "fallback", "special", "kept"]
    path = TokenMap.from_rows(rows, provenance, old_vocab=4).save(tmp_path / "token_map.safetensors")
    shared = shared_from_token_map(path, model_vocab=6, ref_vocab=4)
    assert shared.to_ref.tolist() == [0, 2, -1, -1, 3, 2]
    # Old id 2 is copied twice: compared once, through the lower new id.
    assert sorted(zip(shared.model_cols.tolist(), shared.ref_cols.tolist())) == [(0, 0), (1, 2), (4, 3)]
    with pytest.raises(LingraftError, match="maps 6 -> 4 tokens"):
        shared_from_token_map(path, model_vocab=7, ref_vocab=4)


# -- the loss inside the trainer ---------------------------------------------------------------

def _tiny_pair(tmp_path):
    from transformers import AutoModelForCausalLM
    path = make_tiny_llama(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    reference = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").requires_grad_(False).eval()
    batch = {k: torch.stack([s[k] for s in packed_samples(2)]) for k in ("input_ids", "labels", "position_ids")}
    batch["labels"][0, :5] = -100
    return model, reference, batch


def test_weight_zero_reproduces_plain_cross_entropy_exactly(tmp_path):
    from lingraft.train.loss import micro_batch_loss
    model, reference, batch = _tiny_pair(tmp_path)
    with torch.no_grad():                                 # the model drifts away from the reference
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    plain = micro_batch_loss(model, batch, "sdpa", True)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    anchor = Anchor(reference, weight=0.0, shared=None, doc_mask=True)
    anchored = micro_batch_loss(model, batch, "sdpa", True, anchor=anchor)
    anchored.backward()
    assert anchored.item() == plain.item()
    assert all(torch.equal(a, p.grad) for a, p in zip(plain_grads, model.parameters()))
    assert anchor.step_metrics(anchored.item(), torch.device("cpu"))["kl"] > 0   # measured, only not weighted


def test_anchored_loss_is_ce_plus_weighted_kl_and_the_reference_gets_no_gradient(tmp_path):
    from lingraft.train.loss import micro_batch_loss
    model, reference, batch = _tiny_pair(tmp_path)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    ce = micro_batch_loss(model, batch, "sdpa", True).item()
    anchor = Anchor(reference, weight=2.5, shared=None, doc_mask=True)
    loss = micro_batch_loss(model, batch, "sdpa", True, anchor=anchor)
    loss.backward()
    metrics = anchor.step_metrics(loss.item(), torch.device("cpu"))
    assert metrics["kl"] > 0 and metrics["ce"] == pytest.approx(ce, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 2.5 * metrics["kl"], rel=1e-6)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())


# -- runs of the training loop (local backend) ---------------------------------------------------

def test_anchored_run_logs_kl_and_stays_closer_to_the_reference(tmp_path):
    from safetensors.torch import load_file

    from lingraft.train.loop import train
    model = make_tiny_llama(tmp_path / "m")
    base = load_file(model / "model.safetensors")
    finals = {}
    for name, weight in (("plain", 0.0), ("anchored", 5.0)):
        cfg = tiny_config(model, tmp_path / name, trainable="full", max_steps=6, **{"anchor.weight": weight})
        final = train(cfg, in_memory_source)
        finals[name] = torch.load(final / "engine" / "state.pt", weights_only=True)["trainable"]
    rows = read_metrics(tmp_path / "anchored")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)          # step 1: the model still is the reference
    assert all(r["kl"] > 0 for r in rows[1:])
    assert all(r["loss"] == pytest.approx(r["ce"] + 5.0 * r["kl"], rel=1e-5) for r in rows)
    assert "kl" not in read_metrics(tmp_path / "plain")[0]
    assert losses(tmp_path / "plain")[0] == losses(tmp_path / "anchored")[0]   # same data, same start

    def drift(state):
        return sum(float((state[k].float() - base[k].float()).norm() ** 2) for k in base) ** 0.5
    assert drift(finals["anchored"]) < drift(finals["plain"])


def test_shared_tokens_against_a_smaller_reference_vocabulary(tmp_path):
    from lingraft.train.loop import train
    model = make_tiny_llama(tmp_path / "m")                           # 96 tokens: 0..79 old, 80..95 new
    reference = make_tiny_llama(tmp_path / "ref", vocab=80, seed=1)
    with pytest.raises(LingraftError, match="anchor.tokens=all: the model has 96 tokens, the reference 80"):
        train(tiny_config(model, tmp_path / "bad", **{"anchor.weight": 1.0, "anchor.reference": str(reference)}),
              in_memory_source)
    cfg = tiny_config(model, tmp_path / "run", max_steps=3, **{"anchor.weight": 1.0, "anchor.reference": str(reference),
                                                             "anchor.tokens": "shared", "anchor.shared_ids": "0:80"})
    train(cfg, in_memory_source)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["kl"] > 0 and math.isfinite(r["kl"]) for r in rows)   # a different model: never 0


def test_anchor_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="anchor.shared_ids"):
        tiny_config(tmp_path, tmp_path, **{"anchor.weight": 1.0, "anchor.shared_ids": "0:10"})
    with pytest.raises(ConfigError, match="anchor.weight"):
        tiny_config(tmp_path, tmp_path, **{"anchor.weight": -1.0})
    with pytest.raises(ConfigError, match="anchor.shared_ids"):
        tiny_config(tmp_path, tmp_path, **{"anchor.tokens": "shared", "anchor.shared_ids": "9:3"})


def test_shared_tokens_need_a_common_token():
    with pytest.raises(LingraftError, match="share no token"):
        SharedTokens.from_pairs(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), 5, 5)


# -- DeepSpeed ZeRO-3, 2 CPU ranks: the reference partitioned by a ZeRO-3 engine of its own ------------

@pytest.mark.slow
def test_zero3_two_ranks_with_a_partitioned_reference(tmp_path):
    from tests.integration.train_tiny import TRAIN_RUNS, dist_run_config, free_port, run_launcher, write_configs, \
        write_packed_folder
    model = make_tiny_llama(tmp_path / "m", tied=True)
    data = write_packed_folder(tmp_path / "data")
    configs = {"zero3_anchor": dist_run_config(model, data, tmp_path / "run", backend="deepspeed", zero_stage=3,
                                               trainable="full", **{"anchor.weight": 1.0})}
    run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN_RUNS,
                  *write_configs(tmp_path, configs)], TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # Step 1 compares the model with itself: both engines gather the same partitioned weights.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and all(r["kl"] > 0 for r in rows[1:])
    assert all(r["loss"] == pytest.approx(r["ce"] + r["kl"], rel=1e-5) for r in rows)

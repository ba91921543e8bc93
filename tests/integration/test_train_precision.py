"""Local backend: every trainable mode in bf16 (CPU autocast), and a loss weighted by tokens.

The distributed engines run the same checks in their launches (tests/integration/test_train_fsdp.py,
tests/integration/test_train_deepspeed.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from lingraft.train.loop import train
from lingraft.train.metrics_log import read_metrics
from tests.integration.train_tiny import in_memory_source, make_tiny_llama, masked_source, tiny_config

MODES = {"embeddings": {}, "new_rows": {"new_token_ids": "10:20,70:96"},
         "layers": {"trainable_modules": ["model.layers.1"]}, "lora": {"lora.layers": [-1]}, "full": {}}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_in_bf16(tmp_path, mode):
    model = make_tiny_llama(tmp_path / "m", tied=mode == "new_rows")
    rows = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(model, tmp_path / precision, trainable=mode, precision=precision, max_steps=3,
                          **{"checkpoint.every_steps": 3}, **MODES[mode])
        train(cfg, in_memory_source)
        rows[precision] = read_metrics(tmp_path / precision)
    for fp32, bf16 in zip(rows["fp32"], rows["bf16"]):
        assert math.isfinite(bf16["loss"]) and math.isfinite(bf16["grad_norm"])
        assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)
    assert rows["bf16"][0]["loss"] != rows["fp32"][0]["loss"]      # the matmuls did run in bf16


def _steps(out_dir):
    return [(r["loss"], r["grad_norm"]) for r in read_metrics(out_dir)]


def test_loss_weighs_tokens_not_micro_batches(tmp_path):
    """2 samples x 1 step and 1 sample x 2 accumulation steps: one objective, the same gradients."""
    model = make_tiny_llama(tmp_path / "m")
    common = {"trainable": "full", "max_steps": 2, "checkpoint.every_steps": 2}
    train(tiny_config(model, tmp_path / "one_micro_batch", micro_batch_size=2, grad_accum_steps=1, **common),
          masked_source)
    train(tiny_config(model, tmp_path / "two_micro_batches", micro_batch_size=1, grad_accum_steps=2, **common),
          masked_source)
    for (loss_a, norm_a), (loss_b, norm_b) in zip(_steps(tmp_path / "one_micro_batch"),
                                                  _steps(tmp_path / "two_micro_batches")):
        assert loss_b == pytest.approx(loss_a, rel=1e-5) and norm_b == pytest.approx(norm_a, rel=1e-4)


def test_a_step_without_targets_is_zero_not_nan():
    from lingraft.train.loss import StepTokens, micro_batch_loss
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.int64), "labels": torch.full((1, 4), -100),
             "position_ids": torch.arange(4).unsqueeze(0)}

    class Logits(torch.nn.Module):
        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 8, requires_grad=True)})()
    assert float(micro_batch_loss(Logits(), batch, "sdpa", True, step=StepTokens(0.0))) == 0.0


def test_deepspeed_reduces_and_accumulates_bf16_gradients_in_fp32(tmp_path):
    import json

    from lingraft.train.ds_config import fill_ds_config
    from tests.conftest import REPO
    cfg = tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", zero_stage=2)
    filled = fill_ds_config(cfg, world_size=2, bf16=True, hidden_size=64)
    assert filled["communication_data_type"] == "fp32" and filled["data_types"]["grad_accum_dtype"] == "fp32"
    assert "communication_data_type" not in fill_ds_config(cfg, world_size=2, bf16=False, hidden_size=64)
    template = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    template["communication_data_type"] = "bf16"                       # asked for on purpose: kept
    (tmp_path / "zero2.json").write_text(json.dumps(template))
    cfg = tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", zero_stage=2, ds_config=str(tmp_path / "zero2.json"))
    assert fill_ds_config(cfg, world_size=2, bf16=True, hidden_size=64)["communication_data_type"] == "bf16"

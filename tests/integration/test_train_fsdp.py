"""FSDP2 on CPU under torchrun with 2 ranks (gloo): new_rows, DCP resume, activation checkpointing, export,
bf16 (new_rows, LoRA, full) and a loss weighted by tokens (2 samples x 1 step = 1 sample x 2 accumulation steps).

One torchrun launch runs three trainings in the same process group (tests/integration/train_runs.py):
an uninterrupted reference, and the same run stopped at step 2 and resumed from its DCP
checkpoint with activation checkpointing switched on. Recomputation changes no number on
CPU, so the resumed half must reproduce the reference bit for bit.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.integration.train_tiny import (TRAIN_RUNS, accumulation_pair, assert_same_steps, dist_run_config,
                                          export_and_compare, losses, make_tiny_llama, run_launcher, write_configs,
                                          write_packed_folder)

pytestmark = pytest.mark.slow

NEW = set(range(10, 20)) | set(range(70, 96))


def test_fsdp_new_rows_exact_resume_and_export(tmp_path):
    from transformers import AutoModelForCausalLM
    model = make_tiny_llama(tmp_path / "model", tied=True)
    data = write_packed_folder(tmp_path / "data")
    common = {"backend": "fsdp", "trainable": "new_rows", "new_token_ids": "10:20,70:96"}
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    configs = {
        "ref": dist_run_config(model, data, ref, **common),
        # warmup covers steps 1-2, so stopping at max_steps=2 sees the same lr as the reference
        "first_half": dist_run_config(model, data, resumed, max_steps=2, **common),
        "second_half": dist_run_config(model, data, resumed, activation_checkpointing=True, **common),
        # bf16: the frozen old rows are a buffer, which the mixed-precision policy does not cast.
        "bf16_new_rows": dist_run_config(model, data, tmp_path / "bf16_new_rows", precision="bf16", max_steps=2,
                                         **common),
        "bf16_lora": dist_run_config(model, data, tmp_path / "bf16_lora", precision="bf16", max_steps=2,
                                     backend="fsdp", trainable="lora"),
        "bf16_full": dist_run_config(model, data, tmp_path / "bf16_full", precision="bf16", max_steps=2,
                                     backend="fsdp", trainable="full"),
        **accumulation_pair(model, write_packed_folder(tmp_path / "masked", masked=True), tmp_path, backend="fsdp"),
    }
    run_launcher(["torchrun", "--standalone", "--nproc_per_node", "2", TRAIN_RUNS,
                  *write_configs(tmp_path, configs)])

    reference = losses(ref)
    assert [step for step, _ in reference] == [1, 2, 3, 4]
    assert reference[-1][1] < reference[0][1] - 0.05, reference        # it learns
    assert losses(resumed) == reference                                 # exact resume, bit for bit
    state = json.loads((resumed / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["meta"]["backend"] == "fsdp" and state["world_size"] == 2
    assert (resumed / "checkpoints" / "step_00000004" / "engine" / ".metadata").is_file()   # a DCP folder

    for name in ("bf16_new_rows", "bf16_lora", "bf16_full"):
        assert [step for step, _ in losses(tmp_path / name)] == [1, 2], name
    assert_same_steps(tmp_path)

    changed = export_and_compare(ref, model, tmp_path / "hf_ref")
    assert not any(v for k, v in changed.items() if k != "model.embed_tokens.weight"), changed   # blocks untouched
    rows = changed["model.embed_tokens.weight"]
    assert rows <= NEW and len(rows) > 0.9 * len(NEW)                    # old rows bit-identical
    export_and_compare(resumed, model, tmp_path / "hf_resumed")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_ref")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_resumed")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name

"""DeepSpeed ZeRO-1 and ZeRO-3 on CPU with 2 ranks (gloo) under the `deepspeed` launcher.

One launch runs both trainings in the same process group (tests/integration/train_runs.py):
- ZeRO-1, embeddings: `zero_to_fp32` of a ZeRO-1 checkpoint has no frozen weights, so the
  export must take them from the base model, bit for bit;
- ZeRO-3, new_rows with tied tables: the gradient is partitioned across ranks, yet the old
  rows stay bit-identical because they are not a parameter at all.
- bf16 on every stage (layers, LoRA, new_rows), and the loss weighted by tokens under ZeRO-2
  and ZeRO-3 (2 samples x 1 step = 1 sample x 2 accumulation steps = one local process, on
  masked labels).
ZeRO-2 in fp32 runs under mpirun (tests/integration/test_train_mpi.py). No DeepSpeed C++ op may be compiled.
"""
from __future__ import annotations

import pytest

from tests.integration.train_tiny import TABLES, TRAIN_RUNS, accumulation_pair, assert_same_steps, dist_run_config, \
    export_and_compare, free_port, losses, make_tiny_llama, run_launcher, write_configs, write_packed_folder

pytestmark = pytest.mark.slow

NEW = set(range(10, 20)) | set(range(70, 96))
BF16 = {"backend": "deepspeed", "precision": "bf16", "max_steps": 2}


def test_zero1_embeddings_and_zero3_new_rows_two_ranks(tmp_path):
    untied, tied = make_tiny_llama(tmp_path / "untied"), make_tiny_llama(tmp_path / "tied", tied=True)
    data, masked = write_packed_folder(tmp_path / "data"), write_packed_folder(tmp_path / "masked", masked=True)
    configs = {
        "zero1": dist_run_config(untied, data, tmp_path / "zero1", backend="deepspeed", zero_stage=1,
                                 trainable="embeddings", **{"log.tensorboard": True}),
        "zero3": dist_run_config(tied, data, tmp_path / "zero3", backend="deepspeed", zero_stage=3,
                                 trainable="new_rows", new_token_ids="10:20,70:96"),
        # bf16 on each stage's own optimizer: ZeRO-1 with fp32 gradient accumulation is DeepSpeed's
        # BF16_Optimizer, ZeRO-2 and ZeRO-3 partition bf16 gradients, reduced in fp32.
        "zero1_bf16_layers": dist_run_config(untied, data, tmp_path / "zero1_bf16_layers", **BF16, zero_stage=1,
                                             trainable="layers", trainable_modules=["model.layers.1"]),
        "zero2_bf16_lora": dist_run_config(untied, data, tmp_path / "zero2_bf16_lora", **BF16, zero_stage=2,
                                           trainable="lora"),
        "zero3_bf16_new_rows": dist_run_config(tied, data, tmp_path / "zero3_bf16_new_rows", **BF16, zero_stage=3,
                                               trainable="new_rows", new_token_ids="10:20,70:96"),
        **accumulation_pair(untied, masked, tmp_path, name="zero2_acc", backend="deepspeed", zero_stage=2),
        **accumulation_pair(untied, masked, tmp_path, name="zero3_acc", backend="deepspeed", zero_stage=3),
    }
    extensions = tmp_path / "torch_extensions"
    run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN_RUNS,
                  *write_configs(tmp_path, configs)], TORCH_EXTENSIONS_DIR=str(extensions))
    assert not extensions.exists(), "DeepSpeed compiled an op (deepspeed_shm_comm?) on the CPU accelerator"

    for name in ("zero1", "zero3"):
        steps = losses(tmp_path / name)
        assert [s for s, _ in steps] == [1, 2, 3, 4] and steps[-1][1] < steps[0][1], (name, steps)
    for name in ("zero1_bf16_layers", "zero2_bf16_lora", "zero3_bf16_new_rows"):
        assert [s for s, _ in losses(tmp_path / name)] == [1, 2], name
    assert_same_steps(tmp_path, "zero2_acc")
    assert_same_steps(tmp_path, "zero3_acc")
    assert any((tmp_path / "zero1" / "tensorboard").iterdir())

    changed = export_and_compare(tmp_path / "zero1", untied, tmp_path / "hf1")
    for key, value in changed.items():
        if key in TABLES:
            assert len(value) > 0.9 * 96, key
        else:
            assert not value, key          # frozen weights: from the base, not from zero_to_fp32

    changed = export_and_compare(tmp_path / "zero3", tied, tmp_path / "hf3")
    assert not any(v for k, v in changed.items() if k not in TABLES), changed
    rows = changed["model.embed_tokens.weight"]
    assert rows <= NEW and len(rows) > 0.9 * len(NEW)           # old rows bit-identical under ZeRO-3

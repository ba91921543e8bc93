"""DeepSpeed ZeRO-1 and ZeRO-3 on CPU with 2 ranks (gloo) under the `deepspeed` launcher.

One launch runs both trainings in the same process group (tests/train_runs.py):
- ZeRO-1, embeddings: `zero_to_fp32` of a ZeRO-1 checkpoint has no frozen weights, so the
  export must take them from the base model, bit for bit;
- ZeRO-3, new_rows with tied tables: the gradient is partitioned across ranks, yet the old
  rows stay bit-identical because they are not a parameter at all.
ZeRO-2 runs under mpirun (tests/test_train_mpi.py). No DeepSpeed C++ op may be compiled.
"""
from __future__ import annotations

import pytest

from tests.train_tiny import TABLES, dist_run_config, export_and_compare, free_port, losses, make_tiny_llama, \
    run_launcher, write_configs, write_packed_folder

pytestmark = pytest.mark.slow

NEW = set(range(10, 20)) | set(range(70, 96))


def test_zero1_embeddings_and_zero3_new_rows_two_ranks(tmp_path):
    untied, tied = make_tiny_llama(tmp_path / "untied"), make_tiny_llama(tmp_path / "tied", tied=True)
    data = write_packed_folder(tmp_path / "data")
    configs = {
        "zero1": dist_run_config(untied, data, tmp_path / "zero1", backend="deepspeed", zero_stage=1,
                                 trainable="embeddings", **{"log.tensorboard": True}),
        "zero3": dist_run_config(tied, data, tmp_path / "zero3", backend="deepspeed", zero_stage=3,
                                 trainable="new_rows", new_token_ids="10:20,70:96"),
    }
    extensions = tmp_path / "torch_extensions"
    run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "tests/train_runs.py",
                  *write_configs(tmp_path, configs)], TORCH_EXTENSIONS_DIR=str(extensions))
    assert not extensions.exists(), "DeepSpeed compiled an op (deepspeed_shm_comm?) on the CPU accelerator"

    for name in configs:
        steps = losses(tmp_path / name)
        assert [s for s, _ in steps] == [1, 2, 3, 4] and steps[-1][1] < steps[0][1], (name, steps)
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

"""Bad input found at start: a strategy that cannot hold the model, a checkpoint from another run."""
from __future__ import annotations

import pytest

from lingraft.errors import LingraftError
from lingraft.train.capacity import check_fits
from lingraft.train.loop import train
from tests.integration.train_tiny import in_memory_source, make_tiny_llama, tiny_config, write_packed_folder

GIB = 2**30


def test_replication_of_a_model_larger_than_a_device_names_the_setting(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", zero_stage=2)
    with pytest.raises(LingraftError, match=r"8.00 B parameters need at least 14.9 GiB per device as every weight "
                                            r"in bf16 on every device \(ZeRO-2.*holds 10.0 GiB; .*zero_stage=3"):
        check_fits(cfg, 8 * 10**9, world=8, bf16=True, device_bytes=10 * GIB, device="GPU")
    check_fits(tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", zero_stage=3), 8 * 10**9, world=8,
               bf16=True, device_bytes=10 * GIB, device="GPU")                         # sharded: 1.9 GiB each
    with pytest.raises(LingraftError, match=r"fp32 weights sharded over 2 ranks by FSDP2.*add ranks"):
        check_fits(tiny_config(tmp_path, tmp_path / "o", backend="fsdp"), 8 * 10**9, world=2, bf16=False,
                   device_bytes=10 * GIB, device="GPU")


def test_lingraft_train_refuses_before_launching(tmp_path, monkeypatch, run_cli):
    import lingraft.train.capacity as capacity
    model, data = make_tiny_llama(tmp_path / "m"), write_packed_folder(tmp_path / "data")
    monkeypatch.setattr(capacity, "device_memory", lambda cfg, ranks: (100_000, "GPU (test)", True))
    code, _, err = run_cli("train", "--model", model, "--data", data, "--out-dir", tmp_path / "o", "--max-steps", "1",
                           "--backend", "local")
    assert code == 1 and "per device as every weight in bf16 on one device (backend=local)" in err
    assert "zero_stage=3 (backend=deepspeed) or backend=fsdp" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("change, message", [
    ({"precision": "bf16"}, r"written with precision='float32', this run has precision='bfloat16'; set precision back"),
    ("tie", r"written with tied=False, this run has tied=True; set model \(its tie_word_embeddings\) back"),
])
def test_resuming_a_checkpoint_of_other_settings_fails_at_start(tmp_path, change, message):
    model = make_tiny_llama(tmp_path / "m")
    train(tiny_config(model, tmp_path / "run", max_steps=2, **{"checkpoint.every_steps": 2}), in_memory_source)
    overrides = {}
    if change == "tie":
        make_tiny_llama(model, tied=True)                # the base model was replaced in between
    else:
        overrides = change
    with pytest.raises(LingraftError, match=message):
        train(tiny_config(model, tmp_path / "run", max_steps=4, **overrides), in_memory_source)

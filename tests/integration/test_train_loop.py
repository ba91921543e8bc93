"""The single-process training loop: exact resume after SIGKILL, NaN guard, what trains."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lingraft.errors import LingraftError
from tests.conftest import REPO
from tests.helpers import load_script
from tests.integration.train_tiny import in_memory_source, losses, make_tiny_llama, tiny_config
from lingraft.train.trainer_checkpoint import latest_checkpoint
from lingraft.train.loop import train
from lingraft.train.metrics_log import read_metrics


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    model = make_tiny_llama(tmp_path / "m")
    overrides = {"max_steps": 6, "checkpoint.every_steps": 2, "trainable": "new_rows", "new_token_ids": "60:96"}
    # 4 samples per step: the victim completes step 5 (checkpoint at 4), then blocks inside step 6.
    env = {**os.environ, "LINGRAFT_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([sys.executable, "-m", "tests.integration.train_tiny", str(model), str(tmp_path / "run"),
                               json.dumps(overrides), "20"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        train(tiny_config(model, tmp_path / "ref", **overrides), in_memory_source)   # meanwhile, uninterrupted
        deadline = time.time() + 180
        while [s for s, _ in losses(tmp_path / "run")] != [1, 2, 3, 4, 5]:
            assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the victim never reached step 5"
            time.sleep(0.1)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000004"

    train(tiny_config(model, tmp_path / "run", **overrides), in_memory_source)        # resume in a new run
    assert [s for s, _ in losses(tmp_path / "run")] == list(range(1, 7))             # step 5 redone, logged once
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")                      # bit-exact on CPU fp32
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]                                # keep_last=2
    assert (tmp_path / "run" / "manifest.json").is_file()


def test_nan_loss_stops_with_step_and_last_good_checkpoint(tmp_path, monkeypatch):
    import lingraft.train.backends.local_backend as local
    calls = {"n": 0}
    real = local.micro_batch_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 9 else loss   # step 5, first micro-batch

    monkeypatch.setattr(local, "micro_batch_loss", poisoned)
    cfg = tiny_config(make_tiny_llama(tmp_path / "m"), tmp_path / "run", **{"log.plot": True})
    with pytest.raises(LingraftError, match=r"step 5: non-finite loss \(nan\).*Last good checkpoint: .*step_00000003"):
        train(cfg, in_memory_source)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("mode, extra", [("embeddings", {}), ("layers", {"trainable_modules": ["model.layers.1"]})])
def test_frozen_weights_do_not_move(tmp_path, mode, extra):
    from transformers import AutoModelForCausalLM
    model_dir = make_tiny_llama(tmp_path / "m")
    cfg = tiny_config(model_dir, tmp_path / "run", trainable=mode, max_steps=3, **extra)
    final = train(cfg, in_memory_source)
    trained = torch.load(final / "engine" / "state.pt", weights_only=True)["trainable"]
    expected = {"model.embed_tokens.weight", "lm_head.weight"}
    if mode == "layers":
        expected |= {n for n, _ in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()
                     if n.startswith("model.layers.1.")}
    assert set(trained) == expected


def test_unknown_module_name_is_a_clear_error(tmp_path):
    cfg = tiny_config(make_tiny_llama(tmp_path / "m"), tmp_path / "run", trainable="layers",
                      trainable_modules=["model.layer.1"])
    with pytest.raises(LingraftError, match="no module named 'model.layer.1' \\(did you mean 'model.layers.1'"):
        train(cfg, in_memory_source)


def test_config_errors_are_reported_before_launch(tmp_path, run_cli):
    code, _, err = run_cli("train", "--model", tmp_path, "--data", tmp_path, "--out-dir", tmp_path / "o",
                           "--max-steps", "10", "--trainable", "layers")
    assert code == 2 and "trainable_modules: trainable=layers needs at least one module name" in err
    code, _, err = run_cli("train", "--model", tmp_path, "--data", tmp_path, "--out-dir", tmp_path / "o",
                           "--max-steps", "10", "--new-token-ids", "5:3")
    assert code == 2 and "new_token_ids" in err
    code, _, err = run_cli("train", "--model", tmp_path, "--data", tmp_path, "--out-dir", tmp_path / "o",
                           "--max-steps", "10")
    assert code == 1 and "not a Hugging Face folder" in err
    assert not (tmp_path / "o").exists()


def test_data_from_another_tokenizer_is_refused(tmp_path):
    from tests.integration.train_tiny import write_packed_folder
    from lingraft.train.data import check_data_matches_model
    data = write_packed_folder(tmp_path / "data", vocab=200)
    with pytest.raises(LingraftError, match="vocabulary of 200 but the model has only 96"):
        check_data_matches_model(data, tmp_path, 96)


def test_each_backend_gets_its_launcher_and_the_entry_accepts_fsdp(tmp_path, capsys):
    from pathlib import Path

    from lingraft.train.launcher import command
    # Launchers and ranks run as modules of this interpreter: nothing is looked up on PATH but mpirun.
    entry = ["-m", "lingraft.train.entry", "--config", "c.yaml"]
    fsdp = tiny_config(tmp_path, tmp_path / "o", backend="fsdp", **{"launch.nproc_per_node": 2})
    assert command(fsdp, Path("c.yaml")) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", "2", *entry]
    ds = tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", **{"launch.nproc_per_node": 2})
    cmd = command(ds, Path("c.yaml"))
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"] and cmd[-4:] == ["--module", *entry[1:]]
    mpi = tiny_config(tmp_path, tmp_path / "o", backend="deepspeed", **{"launch.launcher": "mpirun"})
    cmd = command(mpi, Path("c.yaml"))
    assert cmd[0] == "mpirun" and cmd[cmd.index("-np") + 1] == "1" and cmd[-5:] == [sys.executable, *entry]
    assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)
    from lingraft.config import ConfigError
    with pytest.raises(ConfigError, match="ds_config: only used with backend=deepspeed"):
        tiny_config(tmp_path, tmp_path / "o", backend="fsdp", ds_config=str(REPO / "ds_configs" / "zero2.json"))

    # launch/slurm_torchrun.sbatch passes --backend fsdp; without torchrun that is a clear error.
    entry = load_script(REPO / "launch" / "train.py")
    model = make_tiny_llama(tmp_path / "m")
    code = entry.main(["--model", str(model), "--data", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                       "--max-steps", "2", "--backend", "fsdp"])
    assert code == 1 and "backend=fsdp needs a process group" in capsys.readouterr().err

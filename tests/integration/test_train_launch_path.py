"""`lingraft train` starts DeepSpeed and FSDP2 ranks without the virtual environment on PATH.

The launchers run as modules of the interpreter `lingraft` runs in (`-m deepspeed.launcher.runner`,
`-m torch.distributed.run`) and start `-m lingraft.train.entry` with it, so a user who calls
`.venv/bin/lingraft train` without activating the environment gets a training, not
"launcher 'torchrun' is not on PATH".
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.train_tiny import dist_run_config, free_port, launch_env, losses, make_tiny_llama, write_packed_folder

pytestmark = pytest.mark.slow

BARE_PATH = "/usr/bin:/bin"


@pytest.fixture
def bare_path(monkeypatch):
    for key, value in launch_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", BARE_PATH)
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    assert str(Path(sys.executable).parent) not in BARE_PATH.split(":")


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_train_launches_ranks_without_the_venv_on_path(tmp_path, bare_path, capfd, backend):
    from lingraft.cli import main as lingraft
    run = tmp_path / "run"
    extra = {"zero_stage": 1} if backend == "deepspeed" else {}
    cfg = dist_run_config(make_tiny_llama(tmp_path / "model"), write_packed_folder(tmp_path / "data"), run,
                          backend=backend, max_steps=2, **extra, **{"launch.master_port": free_port()})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code = lingraft(["train", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 0, capfd.readouterr().err[-4000:]
    assert [s for s, _ in losses(run)] == [1, 2]

"""The package, its console command, CI script, Dockerfile and shell scripts are well-formed."""
from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (it comes with the test extra)")
    return path


def test_setup_cfg_declares_console_command_and_torch_range():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["name"] == "lingraft"
    assert "lingraft = lingraft.cli:main" in cfg["options.entry_points"]["console_scripts"]
    torch_req = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip().startswith("torch")]
    assert torch_req and any(op in torch_req[0] for op in (">=", "<")), "torch must be a range, not a pin"
    assert "flash-attn" in cfg["options.extras_require"]["gpu"]


def test_console_command_lists_stages():
    out = subprocess.run([_tool("lingraft"), "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("tokenizer", "prep"):
        assert stage in out


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", ["scripts/bootstrap.sh", ".ci/run", "bench/gpu_check.sh"])
def test_shell_scripts_pass_shellcheck(script):
    path = REPO / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    proc = subprocess.run([_tool("shellcheck"), "-x", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci/run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_templates_are_valid_json(stage):
    cfg = json.loads((REPO / "ds_configs" / f"zero{stage}.json").read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"


def test_dockerfile_copies_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    folders = {line.split("=")[1].strip().split("/")[0]
               for line in cfg["options"]["package_dir"].splitlines() if "=" in line}
    dockerfile = (REPO / "Dockerfile").read_text()
    missing = [f for f in sorted(folders) if f"COPY {f} ./{f}" not in dockerfile]
    assert not missing, f"the image would lack {missing}"

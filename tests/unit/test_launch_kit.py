"""The Slurm templates and hostfile generation, as far as they can run without Slurm."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lingraft.errors import LingraftError
from lingraft.hostfile import expand_nodelist, hostfile_text, main as hostfile_main
from tests.conftest import REPO

TEMPLATES = sorted((REPO / "launch").glob("*.sbatch")) + [REPO / "launch" / "common.sh"]


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[8-10],login", ["a8", "a9", "a10", "login"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("dgx-[098-100]", ["dgx-098", "dgx-099", "dgx-100"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu]01", "gpu[3-1]", "gpu[a-b]", ""])
def test_bad_nodelist_is_a_clear_error(bad):
    with pytest.raises(LingraftError, match="nodelist"):
        expand_nodelist(bad)


def test_hostfile_from_sample_nodelist(tmp_path):
    out = tmp_path / "hostfile"
    assert hostfile_main(["--nodelist", "node[1-2]", "--slots", "4", "--out", str(out)]) == 0
    assert out.read_text() == "node1 slots=4\nnode2 slots=4\n"
    assert hostfile_text(["x"], 8) == "x slots=8\n"


def test_hostfile_without_nodelist_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    assert hostfile_main(["--out", str(tmp_path / "h")]) == 1
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("script", TEMPLATES, ids=lambda p: p.name)
def test_templates_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the test extra"
    proc = subprocess.run([shellcheck, "-x", "-P", str(REPO), str(script)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deepspeed_template_runs_its_hostfile_step(tmp_path):
    """Run the template's shell up to the launcher with a fake `deepspeed` on PATH."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "deepspeed").write_text('#!/usr/bin/env bash\necho "deepspeed $*" > "$FAKE_OUT"\n')
    (fake_bin / "deepspeed").chmod(0o755)
    (fake_bin / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "CONFIG": "configs/x.yaml", "LINGRAFT_DIR": str(REPO),
           "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "77", "SLURM_NNODES": "2",
           "GPUS_PER_NODE": "8", "HOSTFILE": str(tmp_path / "hostfile"), "FAKE_OUT": str(tmp_path / "cmd")}
    subprocess.run(["bash", str(REPO / "launch" / "slurm_deepspeed.sbatch")], env=env, check=True, cwd=tmp_path)
    assert (tmp_path / "hostfile").read_text() == "gpu01 slots=8\ngpu02 slots=8\n"
    cmd = (tmp_path / "cmd").read_text()
    assert "--master_addr gpu01" in cmd and "launch/train.py --config configs/x.yaml" in cmd

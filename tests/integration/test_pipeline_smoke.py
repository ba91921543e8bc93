"""Acceptance: the wheel, installed into a fresh virtual environment outside the repository, runs
the shipped smoke preset end to end, from a working folder that holds train.py, evaluation.py
and propagate.py of its own.

    pip wheel . --no-deps -w W;  python -m venv V;  V/bin/pip install --no-deps W/lingraft-*.whl
    cd FOLDER;  V/bin/lingraft pipeline --config smoke

configs/smoke.yaml is every stage of the method on real data slices and a tiny random Llama,
with embedding training under DeepSpeed ZeRO-2 on 2 CPU ranks. Then the same command again:
every stage is skipped. Then one eval parameter changes: only that eval and the report that
reads it run again.

The repository is not importable in these runs: the working folder lies outside it, PYTHONPATH
is unset, PATH holds no folder of the repository (nor the repository venv's bin/), and
`lingraft.__file__` is checked to lie in the fresh venv. The ranks are started with the fresh
venv's interpreter (the launch line in the log says so).

Why the dependencies come through a .pth file: installing torch, DeepSpeed and transformers
again into the fresh venv would take minutes and needs the network. The wheel is installed with
--no-deps, and a .pth file in the fresh venv's site-packages names the repository venv's
site-packages, which appends that folder to sys.path after the fresh venv's own. It is a plain
path line, not `import site; site.addsitedir(...)`: .pth files are run only in site
directories, so the repository venv's own .pth files, among them the editable install's finder
that maps `lingraft` to this checkout, are never run. The wheel is built with
--no-build-isolation for the same reason (an isolated build fetches setuptools from the index).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lingraft.config import load_yaml
from lingraft.manifest import read_manifest
from lingraft.vocabulary.loading import load_tokenizer
from tests.conftest import REPO
from tests.integration.train_tiny import free_port, losses

pytestmark = pytest.mark.slow

SHADOWS = ("train.py", "evaluation.py", "propagate.py")
STAGES = [s["name"] for s in load_yaml("smoke")["stages"]]
Rows = dict[str, tuple[str, str, str]]     # stage -> (status, key metric, output), as the summary table shows


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _dependency_dirs() -> list[str]:
    """The site-packages of the interpreter running the tests: torch, DeepSpeed, transformers..."""
    return list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv outside the repository holding the wheel, the dependencies seen through a .pth file."""
    root = tmp_path_factory.mktemp("acceptance")
    assert not _inside(root, REPO)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(root / "wheel")], check=True)
    (wheel,) = (root / "wheel").glob("lingraft-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "lingraft-test-deps.pth").write_text("".join(f"{p}\n" for p in _dependency_dirs()))
    return venv


@pytest.fixture(scope="module")
def user(tmp_path_factory, shared) -> tuple[Path, dict[str, str]]:
    """The user's working folder (scripts named like stages, failing loudly if imported) and environment."""
    folder = tmp_path_factory.mktemp("user")
    for name in SHADOWS:
        (folder / name).write_text(f"raise SystemExit('imported the user file {name}')\n")
    hidden = [REPO] + ([Path(sys.prefix) / "bin"] if sys.prefix != sys.base_prefix else [])   # the test venv's bin/
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and not any(_inside(p, f) for f in hidden)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join(path), LINGRAFT_SHARED=str(shared), LINGRAFT_CACHE=str(folder / ".cache"),
               LINGRAFT_NO_PROGRESS="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return folder, env


def _lingraft(venv: Path, user, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    folder, env = user
    proc = subprocess.run([str(venv / "bin" / "lingraft"), *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"lingraft {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert "imported the user file" not in proc.stdout + proc.stderr
    return proc


def _table(stdout: str) -> Rows:
    """The summary table the pipeline prints last: stage -> (status, key metric, output)."""
    lines = stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "status"]]
    assert headers, stdout[-3000:]
    rows = {}
    for line in lines[headers[-1] + 1:]:
        cells = line.split()
        if cells and cells[0] in STAGES:
            rows[cells[0]] = (cells[1], cells[3], cells[-1])
    assert list(rows) == STAGES, stdout[-3000:]
    return rows


def _value(metric: str, name: str) -> float:
    """A key metric cell's value (`bits_per_char=4.6`, or with a longer key ending in the name)."""
    key, _, value = metric.rpartition("=")
    assert key.rsplit("/", 1)[-1] == name, metric
    return float(value)


def _smoke(venv: Path, user, port: int, *overrides: str) -> tuple[Rows, subprocess.CompletedProcess]:
    sets = [f"stages.{STAGES.index('train')}.config.launch.master_port={port}", *overrides]
    proc = _lingraft(venv, user, "pipeline", "--config", "smoke", *(a for s in sets for a in ("--set", s)))
    return _table(proc.stdout), proc


@pytest.fixture(scope="module")
def smoke(venv, user):
    port = free_port()
    rows, proc = _smoke(venv, user, port)
    return rows, proc, port


def test_the_installed_wheel_is_what_runs(venv, user):
    folder, env = user
    assert not any(_inside(p, REPO) for p in env["PATH"].split(os.pathsep))
    # `python -c` puts the working folder first on sys.path, where the user's train.py lies.
    code = ("import json, sys, lingraft, lingraft.train.entry, lingraft.evaluation, lingraft.propagate\n"
            "print(json.dumps({'path': sys.path, 'files': [m.__file__ for m in (lingraft, lingraft.train.entry, "
            "lingraft.evaluation, lingraft.propagate)]}))")
    proc = subprocess.run([venv / "bin" / "python", "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    # Of the repository, only the dependencies named in the .pth file are on the path.
    assert {p for p in seen["path"] if p and _inside(p, REPO)} <= set(_dependency_dirs()), seen["path"]
    for file in seen["files"]:
        assert _inside(file, venv), file


def test_smoke_preset_runs_end_to_end(venv, user, smoke):
    folder, _ = user
    rows, proc, _ = smoke
    assert {row[0] for row in rows.values()} == {"ran"}, rows
    assert "final_loss=" in proc.stdout and "bits_per_char=" in proc.stdout
    # The 2 ranks were started with the fresh venv's interpreter, not through a launcher on PATH.
    assert f"launching: {venv / 'bin' / 'python'} -m deepspeed.launcher.runner" in proc.stderr
    out = {name: folder / row[-1] for name, row in rows.items()}
    assert all(_inside(p, folder) for p in out.values()), out      # the preset's work_dir is relative
    for stage in load_yaml("smoke")["stages"]:          # every stage wrote its manifest (evals: their results)
        if stage["command"].startswith("eval "):
            assert out[stage["name"]].exists(), stage["name"]    # a result file or folder
        else:
            assert read_manifest(out[stage["name"]])["fingerprint"], stage["name"]

    # Training really ran as 2 DeepSpeed ranks under ZeRO-2, and learned something.
    ckpt = sorted((out["train"] / "checkpoints").glob("step_*"))[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["meta"]["zero_stage"] == 2
    steps = losses(out["train"])
    assert len(steps) == 6 and steps[-1][1] < steps[0][1], steps

    # B doubles as I, so LEP conversion must hand back the trained tables (least squares, float64),
    # except the special tokens' rows, which LEP always takes from the instruct model.
    adapted = load_file(out["export"] / "model.safetensors")
    propagated = load_file(out["propagate"] / "model.safetensors")
    special = load_tokenizer(out["propagate"]).all_special_ids
    for table in ("model.embed_tokens.weight", "lm_head.weight"):
        keep = torch.ones(adapted[table].shape[0], dtype=torch.bool)
        keep[special] = False
        torch.testing.assert_close(propagated[table][:len(keep)][keep], adapted[table][keep], atol=1e-4, rtol=1e-4)
    bpc = {name: _value(rows[f"bpc_{name}"][1], "bits_per_char") for name in ("base", "adapted")}
    assert bpc["adapted"] < bpc["base"], bpc   # Russian in the extended vocabulary: fewer tokens per char
    assert (out["report"] / "report.md").is_file()


def test_smoke_preset_again_skips_then_reruns_only_what_changed(venv, user, smoke):
    *_, port = smoke
    rows, _ = _smoke(venv, user, port)
    assert {row[0] for row in rows.values()} == {"skipped"}, rows
    rows, _ = _smoke(venv, user, port, f"stages.{STAGES.index('bpc_adapted')}.config.max_chars=3000")
    assert {name for name, row in rows.items() if row[0] == "ran"} == {"bpc_adapted", "report"}, rows

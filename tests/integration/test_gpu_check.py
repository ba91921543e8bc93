"""bench/gpu_check.py's CPU path: the same runs, export and old-row check, on a tiny model.

The GPU run itself (bench/gpu_check.sh) needs a GPU; its shell script is linted in
tests/unit/test_packaging.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_tiny_check_trains_both_modes_and_keeps_old_rows(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--steps", "3", "--workdir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"LINGRAFT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["old_rows_identical"] and result["new_rows_moved"] == result["new_rows"] == 128
    for run in result["runs"].values():
        assert run["steps_timed"] == 2 and run["tokens_per_s"] > 0 and run["mfu"] > 0
    assert result["attention"] == "sdpa" and result["tokens_per_step"] == 2 * 2 * 64

"""exit_rank: a launched rank leaves without interpreter finalisation, with its code and its output flushed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lingraft.train.dist import exit_rank
from tests.conftest import REPO

SCRIPT = """
import atexit, logging, sys
from lingraft.train.dist import exit_rank
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
atexit.register(lambda: print("finalised", flush=True))
print("work done")                       # buffered: exit_rank must flush it
logging.getLogger("rank").info("written")
exit_rank(3)
"""


def _run(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "OMPI_COMM_WORLD_SIZE")}
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_a_launched_rank_skips_finalisation_but_keeps_its_code_and_output():
    done = _run(WORLD_SIZE="2", RANK="1")
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["work done"]          # flushed; atexit handlers skipped
    assert "written" in done.stderr


def test_a_plain_process_exits_normally(monkeypatch):
    done = _run()
    assert done.returncode == 3 and done.stdout.splitlines() == ["work done", "finalised"]
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)     # in this very process: it must raise, not leave
    with pytest.raises(SystemExit) as caught:
        exit_rank(0)
    assert caught.value.code == 0

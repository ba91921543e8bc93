"""The malloc preloaded into the packer's worker processes (`lingraft.preload`) and the worker plan."""
from __future__ import annotations

import os
import sys

import pytest

from lingraft import preload
from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.pack_encode import MAX_AUTO_WORKERS, WorkerPool, plan_workers
from lingraft.errors import LingraftError
from lingraft.preload import cores_per_local_rank, find_allocator, mapped_library, preloaded, settle_preload


def test_auto_takes_mimalloc_then_jemalloc_and_nothing_off_linux(monkeypatch):
    installed = {"mimalloc": "libmimalloc.so.2", "jemalloc": "libjemalloc.so.2"}
    monkeypatch.setattr(preload.ctypes.util, "find_library", lambda name: installed.get(name))
    monkeypatch.setattr(sys, "platform", "linux")
    assert find_allocator("auto") == "libmimalloc.so.2"
    del installed["mimalloc"]
    assert find_allocator("auto") == "libjemalloc.so.2"
    installed.clear()
    assert find_allocator("auto") is None
    installed["mimalloc"] = "libmimalloc.so.2"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert find_allocator("auto") is None
    assert find_allocator("system") is None


def test_an_allocator_path_is_checked_with_the_config(tmp_path):
    library = tmp_path / "libfast.so"
    library.write_bytes(b"")
    assert find_allocator(str(library)) == str(library.resolve())
    with pytest.raises(LingraftError, match="nope.so'?: no such file"):
        find_allocator(str(tmp_path / "nope.so"))
    spaced = tmp_path / "my lib.so"
    spaced.write_bytes(b"")
    for bad, reason in [(tmp_path / "nope.so", "no such file"), (spaced, "spaces or colons")]:
        with pytest.raises(Exception, match=reason):   # before any stage runs
            PackConfig(out=tmp_path / "o", tokenizer="t.json", input=tmp_path, allocator=str(bad))


@pytest.mark.parametrize("before", [None, "libother.so"])
def test_preloaded_sets_and_restores_the_environment(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("LD_PRELOAD", raising=False)
    else:
        monkeypatch.setenv("LD_PRELOAD", before)
    with preloaded("libfast.so.2"):
        assert os.environ["LD_PRELOAD"] == ("libfast.so.2" if before is None else f"libfast.so.2 {before}")
    assert os.environ.get("LD_PRELOAD") == before
    with preloaded(None):
        assert os.environ.get("LD_PRELOAD") == before


def test_a_worker_drops_the_preload_for_its_own_children_and_warns_when_it_did_not_load(monkeypatch, capsys):
    monkeypatch.setenv("LD_PRELOAD", "libnot-loaded.so.1 libother.so")
    settle_preload("libnot-loaded.so.1", "pack worker")
    assert os.environ["LD_PRELOAD"] == "libother.so"
    assert "allocator libnot-loaded.so.1 was not preloaded" in capsys.readouterr().err


def test_plan_workers_and_the_cores_of_a_rank(monkeypatch):
    assert plan_workers(3, None, 64) == 3 and plan_workers(1, "libmimalloc.so.2", 64) == 1
    assert plan_workers(None, None, 64) == 1    # no allocator: threads of the packing process
    assert plan_workers(None, "libmimalloc.so.2", 2) == 2
    assert plan_workers(None, "libmimalloc.so.2", 64) == MAX_AUTO_WORKERS
    monkeypatch.setattr(preload, "usable_cores", lambda: 16)
    monkeypatch.setattr(preload.os, "cpu_count", lambda: 16)
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    assert cores_per_local_rank() == 16
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")   # four unbound ranks share the node
    assert cores_per_local_rank() == 4
    assert cores_per_local_rank(local_ranks=8) == 2          # what MPI itself says wins
    monkeypatch.setattr(preload, "usable_cores", lambda: 2)  # a rank bound to 2 cores keeps them
    assert cores_per_local_rank() == 2


def test_pool_workers_run_on_the_preloaded_allocator(tmp_path):
    library = find_allocator("auto")
    if library is None:
        pytest.skip("neither mimalloc nor jemalloc is installed (scripts/bootstrap.sh installs mimalloc)")
    assert mapped_library(library) is None, "this test process itself should run on the system malloc"
    with WorkerPool(2, 1, tmp_path, library) as pool:
        assert pool.allocator == library
        mapped = [pool.executor.submit(mapped_library, library) for _ in range(4)]
        paths = {f.result(timeout=120) for f in mapped}
        assert None not in paths and all(os.path.basename(p).startswith(library) for p in paths)
        # ... and they do not hand it on to processes they start
        assert pool.executor.submit(os.getenv, "LD_PRELOAD").result(timeout=60) is None
    assert os.environ.get("LD_PRELOAD") is None
    with pytest.raises(RuntimeError, match="load must come before submit"):
        WorkerPool(1, 1, tmp_path, None).submit(["x"], "I", False)

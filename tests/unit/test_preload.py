"""The malloc preloaded into the packer's worker processes (`lingraft.preload`) and the worker plan."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from lingraft.data_prep.pack_encode import MAX_AUTO_WORKERS, plan_workers
from lingraft.errors import LingraftError
from lingraft.preload import find_allocator, mapped_library, preloaded


def test_find_allocator_settings(tmp_path):
    assert find_allocator("system") is None
    with pytest.raises(LingraftError, match="nope.so'?: no such file"):
        find_allocator(str(tmp_path / "nope.so"))
    library = tmp_path / "libfast.so"
    library.write_bytes(b"")
    assert find_allocator(str(library)) == str(library.resolve())
    found = find_allocator("auto")
    assert found is None or any(name in found for name in ("mimalloc", "jemalloc"))


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


def test_plan_workers():
    assert plan_workers(3, None, 64) == 3 and plan_workers(1, "libmimalloc.so.2", 64) == 1
    assert plan_workers(None, None, 64) == 1    # no allocator: threads of the packing process
    assert plan_workers(None, "libmimalloc.so.2", 2) == 2
    assert plan_workers(None, "libmimalloc.so.2", 64) == MAX_AUTO_WORKERS


def test_a_spawned_worker_runs_on_the_preloaded_allocator():
    library = find_allocator("auto")
    if library is None:
        pytest.skip("neither mimalloc nor jemalloc is installed (scripts/bootstrap.sh installs mimalloc)")
    assert mapped_library(library) is None, "this test process itself should run on the system malloc"
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        with preloaded(library):
            started = pool.submit(mapped_library, library)
        path = started.result(timeout=120)
        assert path is not None and os.path.basename(path).startswith(os.path.basename(library))
        assert pool.submit(mapped_library, "libnot-loaded.so.1").result(timeout=60) is None

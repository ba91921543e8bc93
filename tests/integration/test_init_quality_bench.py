"""bench/init_quality.py measures the demo's own init and train stages, changed only where the bench must."""
from __future__ import annotations

from lingraft.config import build_config, to_dict
from tests.conftest import REPO
from tests.helpers import load_script


def load_bench():
    return load_script(REPO / "bench" / "init_quality.py")


def test_each_method_runs_the_demo_init_and_train_stages_with_only_the_bench_changes(monkeypatch, shared, smollm2,
                                                                                  tmp_path):
    bench = load_bench()
    monkeypatch.setenv("LINGRAFT_SHARED", str(shared))
    stages = bench.demo_stages(REPO / "configs" / "demo.yaml", tmp_path / "work")
    assert str(stages["train"].data) == str(tmp_path / "work" / "pack")      # the work folder moved
    calls = []
    monkeypatch.setattr(bench, "lingraft", lambda *args: calls.append(args) or 1.0)

    for method in ("distill", "mean"):
        bench.run_stage("init", stages["init"], bench.init_changes(method, tmp_path / method / "init"),
                        tmp_path / method)
        written = to_dict(build_config(type(stages["init"]), tmp_path / method / "init.yaml"))
        expected = to_dict(stages["init"]) | {"method": method, "out": str(tmp_path / method / "init")}
        assert written == expected | ({"corpus": []} if method == "mean" else {})   # mean reads no corpus
        assert written["distill_steps"] == 96          # the demo's settings, not init's defaults

    bench.train_and_export(stages["train"], tmp_path / "mean" / "init", tmp_path / "mean", steps=5)
    trained = build_config(type(stages["train"]), tmp_path / "mean" / "train.yaml")
    demo = stages["train"]
    assert (trained.max_steps, trained.optim.warmup_steps, trained.checkpoint.every_steps) == (5, 5, 5)
    assert str(trained.model) == str(tmp_path / "mean" / "init")
    assert (trained.distill, trained.optim.lr, trained.precision, trained.trainable) == \
        (demo.distill, demo.optim.lr, demo.precision, demo.trainable)    # the demo's objective
    assert calls == [("init", "--config", tmp_path / "distill" / "init.yaml"),
                     ("init", "--config", tmp_path / "mean" / "init.yaml"),
                     ("train", "--config", tmp_path / "mean" / "train.yaml"),
                     ("export", "--checkpoint", tmp_path / "mean" / "train", "--out", tmp_path / "mean" / "export")]

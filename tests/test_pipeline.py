"""`lingraft pipeline`: stages chained by placeholders, validated up front, skipped when unchanged."""
from __future__ import annotations

import json

import pytest
import yaml

from lingraft.config import ConfigError, build_config
from lingraft.pipeline import run_pipeline
from lingraft.pipeline_config import PipelineConfig


def _pipeline_yaml(tmp_path, shared, vocab_size=600):
    ud = shared / "ru_text" / "ud_russian_sentences.jsonl"
    return {
        "work_dir": str(tmp_path / "work"),
        "stages": [
            {"name": "clean", "command": "prep clean",
             "config": {"sources": [{"path": str(ud), "name": "ud"}], "clean": {"min_chars": 20}}},
            {"name": "tok", "command": "tokenizer train",
             "config": {"data": ["{clean}"], "vocab_size": vocab_size, "kind": "bpe", "style": "byte_level"}},
            {"name": "stats", "command": "tokenizer stats",
             "config": {"tokenizer": ["new={tok}"], "data": [str(ud)], "out": "{work_dir}/stats.json"}},
            {"name": "pack", "command": "prep pack",
             "config": {"input": "{clean}", "tokenizer": "{tok}", "seq_len": 64}},
        ],
    }


def _run(tmp_path, data, *dotted):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = build_config(PipelineConfig, path, dotted=list(dotted))
    return {row["stage"]: row["status"] for row in run_pipeline(cfg)}


def test_runs_then_skips_then_reruns_only_what_changed(tmp_path, shared, capsys):
    data = _pipeline_yaml(tmp_path, shared)
    assert _run(tmp_path, data) == {"clean": "ran", "tok": "ran", "stats": "ran", "pack": "ran"}
    work = tmp_path / "work"
    stats = json.loads((work / "stats.json").read_text())
    assert stats["new"]["tokens_per_word"] > 0
    pack_manifest = json.loads((work / "pack" / "manifest.json").read_text())
    assert pack_manifest["stage"] == "prep.pack"
    assert "stage" in capsys.readouterr().out  # summary table printed

    assert _run(tmp_path, data) == {"clean": "skipped", "tok": "skipped", "stats": "skipped", "pack": "skipped"}

    # A changed tokenizer parameter reruns the tokenizer and everything that reads it, not the cleaning.
    changed = _pipeline_yaml(tmp_path, shared, vocab_size=700)
    assert _run(tmp_path, changed) == {"clean": "skipped", "tok": "ran", "stats": "ran", "pack": "ran"}

    # --force reruns a stage even when up to date.
    assert _run(tmp_path, changed, "force=[clean]", "until=clean") == {"clean": "ran"}


def test_bad_placeholder_fails_before_any_work(tmp_path, shared):
    data = _pipeline_yaml(tmp_path, shared)
    data["stages"][1]["config"]["data"] = ["{cleaned}"]
    with pytest.raises(ConfigError, match=r"stages\[1\]\(tok\).config.data\[0\]: '\{cleaned\}' names no earlier stage"):
        _run(tmp_path, data)
    assert not (tmp_path / "work").exists()


def test_stage_config_errors_name_the_stage_and_key(tmp_path, shared):
    data = _pipeline_yaml(tmp_path, shared)
    data["stages"][3]["config"]["seq_lenn"] = 8
    with pytest.raises(ConfigError, match=r"stages\[3\]\(pack\).config.seq_lenn: unknown key"):
        _run(tmp_path, data)
    data = _pipeline_yaml(tmp_path, shared)
    data["stages"][0]["command"] = "prep cleen"
    with pytest.raises(ConfigError, match="unknown command 'prep cleen'"):
        _run(tmp_path, data)


def test_unset_environment_variable_is_named(tmp_path, shared, monkeypatch):
    monkeypatch.delenv("LINGRAFT_NOT_SET", raising=False)
    data = _pipeline_yaml(tmp_path, shared)
    data["stages"][0]["config"]["sources"][0]["path"] = "${LINGRAFT_NOT_SET}/x.jsonl"
    with pytest.raises(ConfigError, match="environment variable LINGRAFT_NOT_SET is not set"):
        _run(tmp_path, data)


def test_demo_preset_validates(monkeypatch, shared):
    from tests.conftest import REPO
    from lingraft.pipeline import plan

    monkeypatch.setenv("LINGRAFT_SHARED", str(shared))
    cfg = build_config(PipelineConfig, REPO / "configs" / "demo.yaml")
    assert [s.spec.name for s in plan(cfg)][:2] == ["clean", "tokenizer"]

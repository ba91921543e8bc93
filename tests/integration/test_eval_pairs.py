"""One eval stage, several models and several data sets: one record per pair, one report, reruns
keep what is unchanged (the record format itself: tests/unit/test_eval_results.py)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

import lingraft.evaluation.text_tasks as text_tasks
from lingraft.errors import LingraftError
from lingraft.evaluation.results import EvalResult, read_results
from tests.helpers import chat_tokenizer, tiny_chat_model


@pytest.fixture(scope="module")
def models(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    tok = chat_tokenizer(shared)
    return {name: tiny_chat_model(root / name, tok, seed=seed) for seed, name in enumerate(("a", "b"))}


@pytest.fixture
def loads(monkeypatch):
    """The model specs `eval bpc` loads, in order; `fail` names one whose loading fails."""
    seen: list[str] = []
    real = text_tasks.load_model

    def counting(spec, *args, **kwargs):
        seen.append(spec)
        if spec.split("=")[0] in counting.fail:
            raise LingraftError(f"{spec}: cannot load (test)")
        return real(spec, *args, **kwargs)

    counting.fail = set()
    monkeypatch.setattr(text_tasks, "load_model", counting)
    return counting, seen


def _bpc(run_cli, models, shared, out, *extra):
    args = ["eval", "bpc", "--model", f"a={models['a']}", "--model", f"b={models['b']}",
            "--data", f"ud={shared / 'ru_text' / 'ud_russian_sentences.jsonl'}",
            "--data", f"en={shared / 'en_text' / 'fineweb_en_sample.jsonl'}",
            "--max-docs", 2, "--max-length", 16, "--out", out, *extra]
    return run_cli(*args)


def test_every_model_on_every_set_once(models, shared, tmp_path, run_cli, loads):
    _, seen = loads
    out = tmp_path / "bpc"
    code, stdout, err = _bpc(run_cli, models, shared, out)
    assert code == 0, err
    assert seen == [f"a={models['a']}", f"b={models['b']}"]                # each model loaded once
    records = read_results(out)
    assert [(r.model, r.label) for r in records] == [("a", "ud"), ("a", "en"), ("b", "ud"), ("b", "en")]
    assert all(isinstance(r, EvalResult) and r.task == "bpc" and r.metrics["bits_per_char"] > 0 for r in records)
    assert records[1].data.endswith("fineweb_en_sample.jsonl") and records[1].meta["model_path"] == str(models["a"])
    report = (out / "report.md").read_text()
    assert report.startswith("| metric | a | b |") and "| bpc/en/bits_per_byte ↓ |" in report and report in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "eval bpc" and manifest["outputs"]["records"] == 4
    assert manifest["metrics"]["b/bpc/en/bits_per_char"] == records[3].metrics["bits_per_char"]

    # The same command again: every pair is kept, no model is loaded.
    seen.clear()
    assert _bpc(run_cli, models, shared, out)[0] == 0
    assert seen == [] and read_results(out) == records
    # Model b rewritten in place: only its pairs are scored again.
    weights = models["b"] / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert _bpc(run_cli, models, shared, out)[0] == 0
    again = read_results(out)
    assert seen == [f"b={models['b']}"] and again[:2] == records[:2] and again[2].meta["key"] != records[2].meta["key"]
    # Another parameter: every pair again.
    seen.clear()
    assert _bpc(run_cli, models, shared, out, "--max-chars", 100)[0] == 0
    assert len(seen) == 2 and [r.metrics["n_chars"] for r in read_results(out)] == [100] * 4


def test_a_failed_run_keeps_its_finished_pairs(models, shared, tmp_path, run_cli, loads):
    fail, seen = loads
    out = tmp_path / "bpc"
    fail.fail = {"b"}
    code, _, err = _bpc(run_cli, models, shared, out)
    assert code == 1 and "b=" in err and "cannot load" in err
    assert [(r.model, r.label) for r in read_results(out)] == [("a", "ud"), ("a", "en")]
    assert not (out / "manifest.json").exists() and not (out / "report.md").exists()
    fail.fail, seen[:] = set(), []
    assert _bpc(run_cli, models, shared, out)[0] == 0
    assert seen == [f"b={models['b']}"] and len(read_results(out)) == 4


def test_names_must_not_clash(models, shared, tmp_path, run_cli):
    ud = shared / "ru_text" / "ud_russian_sentences.jsonl"
    code, _, err = run_cli("eval", "bpc", "--model", f"x={models['a']}", "--model", f"x={models['b']}",
                           "--data", ud, "--out", tmp_path / "o")
    assert code == 1 and "model names clash: ['x']" in err
    code, _, err = run_cli("eval", "bpc", "--model", models["a"], "--data", ud, "--data", ud, "--out", tmp_path / "o")
    assert code == 1 and "data set names clash" in err
    assert not (tmp_path / "o").exists()


def test_pipeline_stage_with_several_models_and_sets(models, shared, tmp_path, capsys):
    from lingraft.config import build_config
    from lingraft.pipeline import run_pipeline
    from lingraft.pipeline_config import PipelineConfig
    config = {"work_dir": str(tmp_path / "work"), "stages": [
        {"name": "bpc", "command": "eval bpc", "config": {
            "model": [f"a={models['a']}", f"b={models['b']}"], "max_docs": 2, "max_length": 16,
            "data": [f"ud={shared / 'ru_text' / 'ud_russian_sentences.jsonl'}",
                     {"name": "en", "path": str(shared / "en_text" / "fineweb_en_sample.jsonl")}]}},
        {"name": "report", "command": "eval report", "config": {"result": ["{bpc}"]}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    rows = run_pipeline(build_config(PipelineConfig, tmp_path / "p.yaml"))
    assert [r["status"] for r in rows] == ["ran", "ran"]
    assert rows[0]["metric"].startswith("a/bpc/ud/bits_per_char=")
    work = tmp_path / "work"
    assert len(read_results(work / "bpc")) == 4 and read_results(work / "report") == read_results(work / "bpc")
    assert [r["status"] for r in run_pipeline(build_config(PipelineConfig, tmp_path / "p.yaml"))] == ["skipped"] * 2
    capsys.readouterr()


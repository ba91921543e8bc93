"""Eval records and eval configs, without a model: the one record format, the earlier format read
as records, the report built from records, and the data-set and model entries of the configs."""
from __future__ import annotations

import json

import pytest

from lingraft.config import ConfigError, build_config, path_fields
from lingraft.errors import LingraftError
from lingraft.evaluation.config import BpcEvalConfig, CopyEvalConfig, McEvalConfig, ReportConfig
from lingraft.evaluation.report import build_report, flat_values, markdown_table
from lingraft.evaluation.results import EvalResult, from_old_format, read_result, read_results, write_results


def _record(model: str, label: str, bpc: float) -> EvalResult:
    return EvalResult("bpc", model, label, f"{label}.jsonl", {"bits_per_char": bpc, "n_chars": 100},
                      {"key": f"{model}/{label}"})


def test_records_round_trip_and_make_one_report(tmp_path):
    records = [_record("B", "ud", 3.4), _record("B", "en", 1.3), _record("A", "ud", 3.1)]
    write_results(tmp_path / "results.jsonl", records)
    assert read_results(tmp_path) == records and read_results(tmp_path / "results.jsonl") == records
    assert [r.key for r in records] == ["B/ud", "B/en", "A/ud"]
    report = build_report(records, ["x"])
    assert report["models"] == ["B", "A"] and report["values"]["A"]["bpc/en/bits_per_char"] is None
    assert flat_values(report) == {"B/bpc/ud/bits_per_char": 3.4, "B/bpc/en/bits_per_char": 1.3,
                                   "A/bpc/ud/bits_per_char": 3.1}
    assert "| bpc/ud/bits_per_char ↓ | 3.4 | **3.1** |" in markdown_table(report)
    with pytest.raises(LingraftError, match="has bpc/ud/bits_per_char twice"):
        build_report(records + records[:1], ["x"])
    with pytest.raises(LingraftError, match="3 records; read_results reads several"):
        read_result(tmp_path)


def test_a_line_that_is_no_record_is_an_error(tmp_path):
    lines = {"missing.jsonl": {"task": "bpc", "model": "m", "label": "x"},
             "task.jsonl": {**_record("m", "x", 1.0).to_json(), "task": "nope"},
             "metric.jsonl": {**_record("m", "x", 1.0).to_json(), "metrics": {"kind": "bpe"}}}
    for name, line in lines.items():
        (tmp_path / name).write_text(json.dumps(line) + "\n")
    with pytest.raises(LingraftError, match=r"missing.jsonl:1: not a lingraft eval record"):
        read_results(tmp_path / "missing.jsonl")
    with pytest.raises(LingraftError, match=r"task.jsonl:1: unknown task 'nope'"):
        read_results(tmp_path / "task.jsonl")
    with pytest.raises(LingraftError, match=r"metric.jsonl:1: metric 'kind' is not a number"):
        read_results(tmp_path / "metric.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LingraftError, match="no results.jsonl"):
        read_results(tmp_path / "empty")


def test_earlier_result_files_read_as_records(tmp_path):
    meta = {"inputs": {"ud": {"path": "ud.jsonl"}}, "examples": {"ud": [{"source": "s", "prediction": "p"}]}}
    copy = {"task": "copy", "model": "I", "label": "ud", "sentence_length_ratio": 0.8, "paragraph_match_share": None,
            "sets": {"ud": {"kind": "sentence", "n": 16, "exact_match": 0.5, "length_ratio": 0.8}}, "meta": meta}
    (record,) = from_old_format(copy, "copy.json")
    assert (record.label, record.data, record.metrics, record.meta["kind"]) == \
        ("ud", "ud.jsonl", {"n": 16, "exact_match": 0.5, "length_ratio": 0.8}, "sentence")
    speed = {"task": "speed", "model": "conv", "label": "p", "tokens_per_s": 70.0, "tokens_per_s_vs_baseline": 1.1,
             "baseline": {"model": "I", "tokens_per_s": 63.6}, "meta": {"inputs": {"data": {"path": "p.jsonl"}}}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    base, conv = read_results(tmp_path)                          # a folder of earlier result JSONs
    assert (base.model, base.metrics, conv.meta["baseline"]) == ("I", {"tokens_per_s": 63.6}, "I")
    assert conv.metrics == {"tokens_per_s": 70.0, "tokens_per_s_vs_baseline": 1.1} and conv.data == "p.jsonl"
    with pytest.raises(LingraftError, match="2 records"):
        read_result(tmp_path / "speed.json")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"task": "bpc", "model": "m", "label": "x"}) + "\n")
    with pytest.raises(LingraftError, match=r"bad.jsonl:1: not a lingraft eval record"):
        read_results(tmp_path / "bad.jsonl")


def test_data_sets_and_models_in_the_configs(tmp_path):
    data = tmp_path / "ud_russian_sentences.jsonl.xz"
    data.write_text("")
    cfg = build_config(BpcEvalConfig, overrides={
        "model": f"B={tmp_path}", "out": str(tmp_path / "o"),
        "data": [f"ud={data}@body", str(data), {"path": str(data), "name": "third"}]})
    assert cfg.model == [f"B={tmp_path}"] and cfg.out == tmp_path / "o"
    assert [(d.name, d.path, d.text_field) for d in cfg.data] == [
        ("ud", data, "body"), ("ud_russian_sentences", data, None), ("third", data, None)]
    roles = {(f.key, f.role) for f in path_fields(cfg)}       # what the pipeline hashes and never hashes
    assert {("model[0]", "ref"), ("out", "output"), ("data[0].path", "input")} <= roles
    mc = build_config(McEvalConfig, overrides={"model": "m", "out": "o", "task": ["parus=p.jsonl", f"generic={data}"]})
    assert [(t.format, t.name) for t in mc.task] == [("parus", "parus"), ("generic", "ud_russian_sentences")]
    for cls, given, missing in ((BpcEvalConfig, {"model": "m", "out": "o"}, "data"),
                                (BpcEvalConfig, {"data": "d", "out": "o"}, "model"),
                                (McEvalConfig, {"model": "m", "task": "parus=p"}, "out"),
                                (ReportConfig, {"out": "o"}, "result")):
        with pytest.raises(ConfigError, match=f"^{missing}: required key is missing$"):
            build_config(cls, overrides=given)
    with pytest.raises(ConfigError, match="sentences: give --sentences and/or --paragraphs"):
        build_config(CopyEvalConfig, overrides={"model": "m", "out": "o"})
    with pytest.raises(ConfigError, match=r"task\[0\].format: expected one of"):
        build_config(McEvalConfig, overrides={"model": "m", "out": "o", "task": "copa=x.jsonl"})

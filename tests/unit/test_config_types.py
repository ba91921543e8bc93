"""Config field types: required fields, Path coercion, and the pipeline learning a stage's inputs from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lingraft.config import (RUNTIME_ONLY, ConfigError, DatasetRef, ModelRef, OutputPath, build_config, path_fields,
                             ref_paths)
from lingraft.pipeline import Ledger, PlannedStage, fingerprint
from lingraft.pipeline_config import StageSpec


@dataclass
class Section:
    table: Path | None = None
    note: str = ""


@dataclass
class Launch:
    hostfile: Path | None = None


@dataclass
class StageCfg:
    data: Path
    out: OutputPath
    label: str = ""                                   # a plain string, even one that names a file
    extra: list[Path] = field(default_factory=list)
    model: ModelRef | None = None
    corpus: list[DatasetRef] = field(default_factory=list)
    report: OutputPath | None = None
    section: Section = field(default_factory=Section)
    launch: Launch = field(default_factory=Launch, metadata={RUNTIME_ONLY: True})


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("data.jsonl", "label.jsonl", "extra.txt", "table.bin", "hostfile", "report.json"):
        (tmp_path / name).write_text(name)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part").write_text("written")
    return tmp_path


def _cfg(tmp_path: Path, **kw) -> StageCfg:
    base = {"data": str(tmp_path / "data.jsonl"), "out": str(tmp_path / "out"),
            "label": str(tmp_path / "label.jsonl"), "extra": [str(tmp_path / "extra.txt")],
            "report": str(tmp_path / "report.json"), "section": {"table": str(tmp_path / "table.bin")},
            "launch": {"hostfile": str(tmp_path / "hostfile")}}
    return build_config(StageCfg, overrides={**base, **kw})


def _fingerprint(tmp_path: Path, cfg: StageCfg) -> str:
    stage = PlannedStage(StageSpec(name="s", command="x"), None, cfg, Path(cfg.out), [])
    return fingerprint(stage, Ledger(tmp_path / "ledger.json"), [Path(cfg.out).resolve()])


def test_required_field_without_default_is_reported_as_missing():
    with pytest.raises(ConfigError) as info:
        build_config(StageCfg, overrides={"out": "o"})
    assert str(info.value) == "data: required key is missing"
    from lingraft.vocabulary.init_config import InitConfig
    with pytest.raises(ConfigError) as info:
        build_config(InitConfig, overrides={"tokenizer": "t", "out": "o"})
    assert str(info.value) == "model: required key is missing"


def test_path_fields_are_coerced_and_empty_paths_refused(tmp_path):
    from lingraft.data_prep.sft_config import SftPackConfig
    cfg = build_config(SftPackConfig, overrides={"input": ["a.jsonl", "b.jsonl"], "tokenizer": "tok", "out": "o"})
    assert cfg.input == [Path("a.jsonl"), Path("b.jsonl")] and cfg.out == Path("o") and cfg.tokenizer == "tok"
    with pytest.raises(ConfigError, match="^out: expected a path, got ''$"):
        build_config(SftPackConfig, overrides={"input": ["a.jsonl"], "tokenizer": "tok", "out": ""})
    with pytest.raises(ConfigError, match="^tokenizer: expected a local path or a hub id, got ''$"):
        build_config(SftPackConfig, overrides={"input": ["a.jsonl"], "tokenizer": "", "out": "o"})


def test_path_fields_walk_types_not_strings(files, tmp_path):
    cfg = _cfg(tmp_path, model="m=" + str(tmp_path / "model"), corpus=["org/hub-dataset"])
    found = {(p.key, p.role) for p in path_fields(cfg)}
    assert found == {("data", "input"), ("out", "output"), ("extra[0]", "input"), ("model", "ref"),
                     ("corpus[0]", "ref"), ("report", "output"), ("section.table", "input")}
    assert ref_paths("m=" + str(tmp_path / "model")) == [tmp_path / "model"]
    assert ref_paths("org/hub-dataset") == [] and ref_paths(str(tmp_path / "model")) == [tmp_path / "model"]


def test_fingerprint_hashes_declared_inputs_only(files, tmp_path):
    cfg = _cfg(tmp_path, model=str(tmp_path / "model"))
    fp = _fingerprint(tmp_path, cfg)
    assert _fingerprint(tmp_path, cfg) == fp

    def changed(path: Path, text: str) -> str:
        path.write_text(text)
        return _fingerprint(tmp_path, cfg)

    # An input's content changes the fingerprint: a Path field, a list item, a nested section, a local model.
    for path in (tmp_path / "data.jsonl", tmp_path / "extra.txt", tmp_path / "table.bin",
                 tmp_path / "model" / "config.json"):
        new = changed(path, path.read_text() + " changed")
        assert new != fp, path
        fp = new
    # Outputs are never hashed (the stage's own folder, and an extra output file beside it) ...
    assert changed(tmp_path / "out" / "part", "rewritten") == fp
    assert changed(tmp_path / "report.json", "rewritten") == fp
    # ... nor a plain string that happens to name a file, nor a runtime-only section.
    assert changed(tmp_path / "label.jsonl", "rewritten") == fp
    assert changed(tmp_path / "hostfile", "other nodes") == fp


def test_runtime_only_section_is_left_out_of_the_parameters(files, tmp_path):
    fp = _fingerprint(tmp_path, _cfg(tmp_path))
    assert _fingerprint(tmp_path, _cfg(tmp_path, launch={"hostfile": str(tmp_path / "elsewhere")})) == fp
    assert _fingerprint(tmp_path, _cfg(tmp_path, label="other")) != fp


def test_cli_lists_required_options_and_names_the_missing_flag(run_cli, tmp_path):
    code, out, _ = run_cli("init", "--help")
    required = out.split("required (each as a flag or as a key of --config):")[1]
    assert code == 0 and all(f"--{name}" in required for name in ("model", "tokenizer", "out"))
    assert "--method" not in required
    code, _, err = run_cli("init", "--tokenizer", "t", "--out", tmp_path / "o")
    assert code == 2 and err.strip() == ("lingraft init: config error: model: required key is missing "
                                         "(give --model, or model: in a --config file)")
    code, _, err = run_cli("hydra", "plain", "--hydra", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "language: required key is missing (give --language" in err
    assert list(tmp_path.iterdir()) == []

"""Typed configs and the `lingraft` command: precedence, and one-line errors that name the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lingraft.data_prep.clean_config import CleanStageConfig
from lingraft.cli import build_parser, config_from_args
from lingraft.registry import Command
from lingraft.config import ConfigError, build_config, parse_override, require, to_dict


@dataclass
class Inner:
    rate: float = 0.5
    mode: Literal["fast", "exact"] = "fast"
    limit: int | None = None

    def __post_init__(self) -> None:
        require(self.rate > 0, "rate", f"must be > 0, got {self.rate}")


@dataclass
class Item:
    path: str
    weight: float = 1.0


@dataclass
class Outer:
    name: str
    steps: int = 10
    out: Path = Path("runs/x")
    flags: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "config errors must be one line"
    return message


def test_precedence_defaults_yaml_overrides_dotted(tmp_path):
    path = _yaml(tmp_path, "name: from_yaml\nsteps: 20\ninner: {rate: 2.0}\n")
    cfg = build_config(Outer, path, overrides={"steps": 30}, dotted=["inner.mode=exact", "steps=40"])
    assert (cfg.name, cfg.steps, cfg.inner.rate, cfg.inner.mode) == ("from_yaml", 40, 2.0, "exact")
    assert cfg.out == Path("runs/x") and cfg.inner.limit is None
    assert build_config(Outer, path).steps == 20
    assert to_dict(cfg)["out"] == "runs/x" and to_dict(cfg)["inner"]["mode"] == "exact"


def test_unknown_key_suggests_the_close_one(tmp_path):
    assert _error(build_config, Outer, _yaml(tmp_path, "name: a\nstpes: 3\n")) == \
        "stpes: unknown key (did you mean 'steps'?)"
    assert _error(build_config, Outer, dotted=["name=a", "inner.rtae=1"]) == \
        "inner.rtae: unknown key (did you mean 'inner.rate'?)"
    assert _error(build_config, Outer, dotted=["name=a", "zzz=1"]) == "zzz: unknown key"


def test_wrong_types_name_the_key():
    assert _error(build_config, Outer, dotted=["name=a", "steps=abc"]) == "steps: expected int, got 'abc'"
    assert _error(build_config, Outer, dotted=["name=a", "steps=1.5"]) == "steps: expected int, got 1.5"
    assert _error(build_config, Outer, dotted=["name=a", "inner.limit=lots"]) == \
        "inner.limit: expected int or null, got 'lots'"
    assert _error(build_config, Outer, overrides={"name": "a", "items": [{"path": "p", "weight": "x"}]}) == \
        "items[0].weight: expected float, got 'x'"
    assert _error(build_config, Outer, overrides={"name": "a", "inner": 3}) == \
        "inner: expected a mapping for Inner, got 3"


def test_literal_choices_and_post_init_checks():
    assert _error(build_config, Outer, dotted=["name=a", "inner.mode=slow"]) == \
        "inner.mode: expected one of ['fast', 'exact'], got 'slow'"
    assert _error(build_config, Outer, dotted=["name=a", "inner.rate=-1"]) == "inner.rate: must be > 0, got -1.0"


def test_missing_required_key():
    assert _error(build_config, Outer) == "name: required key is missing"
    assert _error(build_config, Outer, overrides={"name": "a", "items": [{"weight": 2}]}) == \
        "items[0].path: required key is missing"


def test_dotted_override_can_index_lists(tmp_path):
    path = _yaml(tmp_path, "name: a\nitems: [{path: x}, {path: y}]\n")
    cfg = build_config(Outer, path, dotted=["items.1.weight=0.25"])
    assert [(i.path, i.weight) for i in cfg.items] == [("x", 1.0), ("y", 0.25)]
    assert "not an index" in _error(build_config, Outer, path, dotted=["items.5.weight=1"])
    # a scalar is never silently replaced by a mapping (the path would be lost)
    assert "already set to 'x'" in _error(build_config, Outer, None, {"name": "a", "items": ["x"]},
                                          dotted=["items.0.weight=0.5"])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert _error(parse_override, "novalue") == "novalue: override must look like key=value"


def test_bad_yaml_files_are_one_line_errors(tmp_path):
    assert "config file not found" in _error(build_config, Outer, tmp_path / "nope.yaml")
    assert "invalid YAML" in _error(build_config, Outer, _yaml(tmp_path, "name: [unclosed\n"))
    assert "mapping at the top level" in _error(build_config, Outer, _yaml(tmp_path, "- a\n- b\n"))


# --- the real `lingraft prep clean` command -----------------------------------------------------

def _clean_args(*argv: str) -> CleanStageConfig:
    parser = build_parser([Command(path=("prep", "clean"), config_cls=CleanStageConfig, runner="x:y", help="",
                                   aliases={"--source": "sources"})])
    args = parser.parse_args(["prep", "clean", *argv])
    return config_from_args(args._command, args)


def test_cli_flags_override_yaml_and_set_overrides_flags(tmp_path):
    path = _yaml(tmp_path, "sources: [{path: a.jsonl, weight: 0.9}, {path: b.jsonl, weight: 0.1}]\n"
                           "out: from_yaml\npart_chars: 100\nclean: {min_chars: 5}\n")
    cfg = _clean_args("--config", str(path), "--part-chars", "200", "--set", "clean.min_chars=7",
                      "--set", "sources.1.weight=0.2", "--strict")
    assert (cfg.out, cfg.part_chars, cfg.clean.min_chars, cfg.strict) == (Path("from_yaml"), 200, 7, True)
    assert [(s.name, s.weight) for s in cfg.sources] == [("a", 0.9), ("b", 0.2)]
    assert _clean_args("--config", str(path), "--strict", "false").strict is False
    # A list flag replaces the YAML list; a bare path is shorthand for {path: ...}.
    cfg = _clean_args("--config", str(path), "--source", "c.jsonl.xz", "--source", "{path: d.txt, weight: 3}",
                      "--out", "o")
    assert [(s.name, s.path, s.weight) for s in cfg.sources] == [("c", "c.jsonl.xz", 1.0), ("d", "d.txt", 3.0)]
    assert cfg.out == Path("o")


def test_cli_nested_literal_and_defaults():
    cfg = _clean_args("--source", "a.jsonl", "--out", "o", "--set", "clean.near_dedup.shingle=char",
                      "--set", "mix.on_exhausted=continue", "--set", "clean.allowed_scripts=[Cyrillic, Common]")
    assert cfg.clean.near_dedup.shingle == "char" and cfg.mix.on_exhausted == "continue"
    assert cfg.clean.allowed_scripts == ["Cyrillic", "Common"]
    assert cfg.part_chars == 4_000_000 and cfg.strict is False and cfg.clean.normalize == "NFC"


def test_exponent_without_a_dot_is_a_float():
    """YAML 1.1 reads 8e-1 as a string; a float field takes it as Python would."""
    from lingraft.config import build_config
    from lingraft.data_prep.clean_config import CleanStageConfig
    cfg = build_config(CleanStageConfig, None, {"sources": ["a.jsonl"], "out": "o"},
                       ["clean.near_dedup.threshold=8e-1"])
    assert cfg.clean.near_dedup.threshold == 0.8


@pytest.mark.parametrize("argv, message", [
    (["--set", "clean.min_char=5"], "clean.min_char: unknown key (did you mean 'clean.min_chars'?)"),
    (["--part-chars", "many"], "part_chars: expected int, got 'many'"),
    (["--set", "clean.near_dedup.threshold=high"], "clean.near_dedup.threshold: expected float, got 'high'"),
    (["--set", "mix.on_exhausted=wait"], "mix.on_exhausted: expected one of ['stop', 'continue'], got 'wait'"),
    (["--set", "clean.normalize=NFX"], "clean.normalize: expected one of"),
    (["--set", "clean.allowed_scripts=[Cyrilic]"],
     "clean.allowed_scripts[0]: 'Cyrilic' is not a Unicode script or general category"),
    (["--set", "clean.max_chars=3", "--set", "clean.min_chars=10"], "clean.max_chars: must be >= min_chars"),
    (["--source", "{path: a.jsonl, weight: 0}"], "sources[1].weight: must be > 0, got 0.0"),
    (["--source", "{path: a.jsonl, wieght: 2}"], "sources[1].wieght: unknown key (did you mean 'sources[1].weight'?)"),
    (["--source", "x/a.jsonl"], "sources[1].name: 'a' is also the name of sources[0]"),
    (["--strict", "maybe"], "strict: expected true or false, got 'maybe'"),
])
def test_cli_config_errors_exit_2_with_one_line_and_nothing_written(run_cli, tmp_path, argv, message):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("prep", "clean", "--source", "a.jsonl", "--out", out, *argv)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("lingraft prep clean: config error: ")
    assert message in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_missing_required_and_usage_errors(run_cli, tmp_path):
    code, _, err = run_cli("prep", "clean", "--source", "a.jsonl")
    assert code == 2 and err.strip() == ("lingraft prep clean: config error: out: required key is missing "
                                         "(give --out, or out: in a --config file)")
    code, _, err = run_cli("prep", "clean", "--out", tmp_path / "o")
    assert code == 2 and "sources: required key is missing" in err
    code, _, err = run_cli("prep", "clean", "--no-such-flag", "1")
    assert code == 2 and "unrecognized arguments: --no-such-flag" in err
    code, out, _ = run_cli("prep", "clean", "--help")
    assert code == 0 and "--source" in out and "--part-chars" in out
    assert list(tmp_path.iterdir()) == []


def test_cli_runtime_error_is_one_line_exit_1(run_cli, tmp_path):
    code, _, err = run_cli("prep", "clean", "--source", tmp_path / "missing.jsonl", "--out", tmp_path / "o")
    assert code == 1
    missing = tmp_path / "missing.jsonl"
    assert err.strip() == f"lingraft prep clean: error: sources[0].path: {missing}: no such file or folder"
    assert not (tmp_path / "o").exists()

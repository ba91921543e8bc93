"""The wheel is one top-level package carrying its data; the code finds that data as package data."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from lingraft.config import ConfigError, build_config, load_yaml, preset_names
from lingraft.pipeline_config import PipelineConfig
from lingraft.train.config import TrainConfig
from lingraft.train.ds_config import template_path
from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out)], check=True)
    (path,) = out.glob("lingraft-*.whl")
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def test_wheel_has_one_top_level_package(wheel):
    tops = {name.split("/")[0] for name in wheel}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"lingraft"}


def test_wheel_carries_zero_templates_and_presets(wheel):
    for stage in (1, 2, 3):
        assert f"lingraft/ds_configs/zero{stage}.json" in wheel
    for preset in ("smoke", "demo"):
        assert f"lingraft/configs/{preset}.yaml" in wheel
    for stage in ("data_prep", "vocabulary", "train", "propagate/lep", "evaluation"):
        assert f"lingraft/{stage}/__init__.py" in wheel


def test_zero_templates_are_read_as_package_data():
    for stage in (1, 2, 3):
        cfg = TrainConfig(model="m", data="d", out_dir="o", max_steps=1, zero_stage=stage)
        assert template_path(cfg).read_text() == (REPO / "ds_configs" / f"zero{stage}.json").read_text()


def test_a_preset_is_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)       # no configs/ folder here: the shipped copy is read
    assert {"smoke", "demo"} <= set(preset_names())
    assert load_yaml("smoke") == load_yaml(REPO / "configs" / "smoke.yaml")
    assert build_config(PipelineConfig, "smoke.yaml").stages[0].name == "clean"
    with pytest.raises(ConfigError, match=r"nope: config file not found \(shipped presets, by name: \["):
        load_yaml("nope")

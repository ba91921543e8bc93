"""configs/smoke.yaml end to end: real data slices, a tiny random Llama, DeepSpeed ZeRO-2 on 2 CPU ranks.

Then the same pipeline again: every stage is skipped. Then one eval parameter changes:
only that eval and the report that reads it run again.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lingraft.config import build_config
from lingraft.pipeline import run_pipeline
from lingraft.pipeline_config import PipelineConfig
from tests.conftest import REPO
from tests.integration.train_tiny import free_port, launch_env, losses
from lingraft.vocabulary.loading import load_tokenizer

pytestmark = pytest.mark.slow


def _smoke_config(tmp_path, **stage_overrides) -> PipelineConfig:
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["work_dir"] = str(tmp_path / "work")
    for stage in data["stages"]:
        stage["config"].update(stage_overrides.get(stage["name"], {}))
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    return build_config(PipelineConfig, path)


def test_smoke_preset_runs_end_to_end_then_skips(tmp_path, shared, monkeypatch, capsys):
    for key, value in launch_env(LINGRAFT_SHARED=str(shared)).items():
        monkeypatch.setenv(key, value)
    port = {"train": {"launch": {"nproc_per_node": 2, "master_port": free_port(), "dist_timeout_s": 120}}}
    rows = run_pipeline(_smoke_config(tmp_path, **port))
    assert {r["status"] for r in rows} == {"ran"}, rows
    table = capsys.readouterr().out
    assert "final_loss=" in table and "bits_per_char=" in table
    work = tmp_path / "work"

    # Training really ran as 2 DeepSpeed ranks under ZeRO-2, and learned something.
    ckpt = sorted((work / "train" / "checkpoints").glob("step_*"))[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["meta"]["zero_stage"] == 2
    steps = losses(work / "train")
    assert len(steps) == 6 and steps[-1][1] < steps[0][1], steps

    # B doubles as I, so LEP conversion must hand back the trained tables (least squares, float64),
    # except the special tokens' rows, which LEP always takes from the instruct model.
    adapted = load_file(work / "export" / "model.safetensors")
    propagated = load_file(work / "propagate" / "model.safetensors")
    special = load_tokenizer(work / "propagate").all_special_ids
    for table in ("model.embed_tokens.weight", "lm_head.weight"):
        keep = torch.ones(adapted[table].shape[0], dtype=torch.bool)
        keep[special] = False
        torch.testing.assert_close(propagated[table][:len(keep)][keep], adapted[table][keep], atol=1e-4, rtol=1e-4)
    bpc = {name: json.loads((work / "eval" / f"bpc_{name}.json").read_text())["bits_per_char"]
           for name in ("base", "adapted")}
    assert bpc["adapted"] < bpc["base"], bpc   # Russian in the extended vocabulary: fewer tokens per char
    assert (work / "report" / "report.md").is_file()

    rows = run_pipeline(_smoke_config(tmp_path, **port))
    assert {r["status"] for r in rows} == {"skipped"}, rows

    changed = run_pipeline(_smoke_config(tmp_path, **port, bpc_adapted={"max_chars": 3000}))
    assert {r["stage"] for r in changed if r["status"] == "ran"} == {"bpc_adapted", "report"}, changed

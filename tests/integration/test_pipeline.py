"""`lingraft pipeline`: stages chained by placeholders, validated up front, skipped when unchanged."""
from __future__ import annotations

import json
import lzma
import re
import subprocess
import sys

import pytest
import yaml

from lingraft.config import ConfigError, build_config
from lingraft.pipeline import run_pipeline
from lingraft.pipeline_config import PipelineConfig
from tests.conftest import REPO


def _pipeline_yaml(tmp_path, shared, vocab_size=600):
    ud = shared / "ru_text" / "ud_russian_sentences.jsonl"
    return {
        "work_dir": str(tmp_path / "work"),
        "stages": [
            {"name": "clean", "command": "prep clean",
             "config": {"sources": [{"path": str(ud), "name": "ud"}], "mix": {"max_chars": 200_000},
                        "clean": {"min_chars": 20, "near_dedup": {"enabled": False}}}},
            {"name": "tok", "command": "tokenizer train",
             "config": {"data": ["{clean}"], "vocab_size": vocab_size, "kind": "bpe", "style": "byte_level"}},
            {"name": "stats", "command": "tokenizer stats",
             "config": {"tokenizer": ["new={tok}"], "data": [str(ud)], "max_chars": 100_000,
                        "out": "{work_dir}/stats.json"}},
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


def test_interrupted_stage_resumes_and_changed_stage_discards_stale_output(tmp_path, shared, monkeypatch, capsys):
    import lingraft.pipeline as pipeline
    data = _pipeline_yaml(tmp_path, shared)
    real = pipeline.resolve_runner

    def interrupted_pack(spec):
        if spec.startswith("lingraft.data_prep.pack"):
            def killed(cfg):
                raise KeyboardInterrupt
            return killed
        return real(spec)
    monkeypatch.setattr(pipeline, "resolve_runner", interrupted_pack)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, data)
    assert re.search(r"^pack +failed", capsys.readouterr().out, re.M)   # the table names the failed stage
    monkeypatch.setattr(pipeline, "resolve_runner", real)
    # Same parameters: the interrupted stage runs again (and resumes its own partial work).
    assert _run(tmp_path, data) == {"clean": "skipped", "tok": "skipped", "stats": "skipped", "pack": "resumed"}

    # Other parameters: what this pipeline wrote before is discarded, never resumed from.
    stale = tmp_path / "work" / "pack" / "stale-marker"
    stale.write_text("from the old parameters")
    data["stages"][3]["config"]["seq_len"] = 32
    assert _run(tmp_path, data)["pack"] == "ran"
    assert not stale.exists()


def test_dry_run_reports_without_writing(tmp_path, shared):
    data = _pipeline_yaml(tmp_path, shared)
    assert set(_run(tmp_path, data, "dry_run=true").values()) == {"would run"}
    assert not (tmp_path / "work").exists()
    _run(tmp_path, data)
    changed = _pipeline_yaml(tmp_path, shared, vocab_size=700)
    # Only tok changed, but stats and pack read it, so they would run too.
    assert _run(tmp_path, changed, "dry_run=true") == {"clean": "would skip", "tok": "would run",
                                                       "stats": "would run", "pack": "would run"}


def test_literal_braces_and_builtins(tmp_path, shared):
    from lingraft.pipeline import plan
    data = _pipeline_yaml(tmp_path, shared)
    data["stages"][2]["config"]["tokenizer"] = ["new={tok}", "{{literal}}"]
    (stats,) = [s for s in plan(build_config(PipelineConfig, overrides=data)) if s.spec.name == "stats"]
    assert stats.config.tokenizer == [f"new={tmp_path / 'work' / 'tok'}", "{literal}"]
    data["stages"][2]["config"]["tokenizer"] = ["{builtin:gpt5}"]
    with pytest.raises(ConfigError, match=r"unknown '\{builtin:gpt5\}' \(known: \['smollm2'\]\)"):
        plan(build_config(PipelineConfig, overrides=data))


def test_demo_preset_validates(monkeypatch, shared, smollm2):
    from lingraft.pipeline import plan
    monkeypatch.setenv("LINGRAFT_SHARED", str(shared))
    stages = {s.spec.name: s for s in plan(build_config(PipelineConfig, REPO / "configs" / "demo.yaml"))}
    assert stages["init"].config.model == str(smollm2)                 # {builtin:smollm2}
    assert stages["train"].config.backend == "local"
    assert str(stages["sft_train"].config.model) == str(smollm2) and stages["sft_train"].config.trainable == "full"
    # A: the trained rows, the body adapted to them (LoRA, distilled from B); propagation carries
    # its tables into I, and the body's delta follows as a skill pack
    body, rows = stages["body"].config, str(stages["export"].config.out)
    assert (body.trainable, str(body.model), str(body.distill.teacher)) == ("lora", rows, str(smollm2))
    pack, adapted = stages["body_pack"].config, str(stages["body_export"].config.out)
    assert (str(pack.base), str(pack.tuned)) == (rows, adapted)
    grafted = stages["grafted"].config
    assert str(grafted.base) == str(stages["conversion"].config.out) and grafted.allow_other_base
    assert [str(p) for p in grafted.packs] == [str(pack.out)]
    assert str(stages["calibrate"].config.model) == str(grafted.out)
    for method in ("swap", "overlap", "conversion"):   # A propagated into the SFT sibling I, not into B
        propagate = stages[method].config
        assert str(propagate.adapted) == adapted
        assert (propagate.method, propagate.base) == (method, str(smollm2))
        assert str(propagate.instruct) == str(stages["instruct"].config.out) != str(smollm2)
    heldout = stages["heldout_author"].config.sources[0].include
    assert stages["clean"].config.sources[0].exclude == heldout == {"author": ["Blok"]}


def test_demo_mix_draws_its_literature_from_every_training_author(monkeypatch, shared, smollm2):
    """RusLit holds a work per record, ordered by author: the demo's source cuts and samples it, so
    that the RusLit share of its capped mix, taken in stream order as the mixer takes it, reaches
    every author but the held-out one (unsampled, the 3M-character mix was all Bryusov)."""
    from lingraft.data_prep.readers import iter_documents
    from lingraft.pipeline import plan
    monkeypatch.setenv("LINGRAFT_SHARED", str(shared))
    clean = plan(build_config(PipelineConfig, REPO / "configs" / "demo.yaml"))[0].config
    ruslit = next(s for s in clean.sources if s.name == "ruslit")
    with lzma.open(shared / "ru_text" / "ruslit.jsonl.xz", "rt", encoding="utf-8") as fh:
        author_of_line = {n: json.loads(line)["author"] for n, line in enumerate(fh, 1)}
    budget = ruslit.weight / sum(s.weight for s in clean.sources) * clean.mix.max_chars
    taken: dict[str, int] = {}
    total = 0
    for doc in iter_documents(ruslit):
        author = author_of_line[int(doc.where.rsplit(":", 1)[1].split("#")[0])]
        taken[author] = taken.get(author, 0) + len(doc.text)
        total += len(doc.text)
        if total >= budget:
            break
    assert set(taken) == set(author_of_line.values()) - {"Blok"}, taken
    assert max(taken.values()) < 0.4 * sum(taken.values())


def _cluster_env(monkeypatch, shared, tmp_path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu01 slots=8\ngpu02 slots=8\n")
    for key, value in {"LINGRAFT_SHARED": str(shared), "LINGRAFT_CORPUS_RU": str(tmp_path / "ru"),
                       "LINGRAFT_CORPUS_EN": str(tmp_path / "en"), "LINGRAFT_HOSTFILE": str(hostfile),
                       "LINGRAFT_DS_LAUNCHER": "openmpi", "MASTER_ADDR": "gpu01"}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("preset, lr", [("llama3-8b-ru", 2e-4), ("mistral-7b-ru", 1e-4)])
def test_cluster_presets_validate_with_the_papers_settings(preset, lr, monkeypatch, shared, tmp_path):
    from lingraft.pipeline import plan
    _cluster_env(monkeypatch, shared, tmp_path)
    stages = {s.spec.name: s for s in plan(build_config(PipelineConfig, REPO / "configs" / f"{preset}.yaml"))}
    assert {"extended", "optimized", "propagate_extended", "propagate_optimized"} <= set(stages)
    for variant in ("extended", "optimized"):
        train = stages[f"train_{variant}"].config
        assert stages[f"pack_{variant}"].config.seq_len == 1024
        assert train.micro_batch_size * train.grad_accum_steps * 16 == 256       # 2 nodes x 8 GPUs
        assert (train.optim.lr, train.optim.weight_decay, train.optim.warmup_steps) == (lr, 0.1, 100)
        assert (train.backend, train.zero_stage, train.trainable) == ("deepspeed", 2, "embeddings")
        assert str(train.launch.hostfile) == str(tmp_path / "hostfile") and train.launch.ds_launcher == "openmpi"


def test_slurm_template_runs_the_pipeline_preset(tmp_path, shared):
    """launch/slurm_pipeline.sbatch up to a dry run of the preset: hostfile, environment, every stage config."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # A wrapper, not a symlink: the virtual environment (and lingraft in it) is found from the real path.
    (fake_bin / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake_bin / "python3").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "CONFIG": "configs/llama3-8b-ru.yaml", "LINGRAFT_DIR": str(REPO),
           "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "77", "SLURM_NNODES": "2", "GPUS_PER_NODE": "8",
           "HOSTFILE": str(tmp_path / "hostfile"), "LINGRAFT_SHARED": str(shared),
           "LINGRAFT_CORPUS_RU": "ru.jsonl", "LINGRAFT_CORPUS_EN": "en.jsonl", "LINGRAFT_NO_PROGRESS": "1"}
    done = subprocess.run(["bash", str(REPO / "launch" / "slurm_pipeline.sbatch"), "--dry-run",
                           "--work-dir", str(tmp_path / "work")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "hostfile").read_text() == "gpu01 slots=8\ngpu02 slots=8\n"
    assert re.search(r"^train_extended +would run", done.stdout, re.M), done.stdout
    assert not (tmp_path / "work").exists()

"""Cross-tokenizer distillation in `lingraft train` (train/distill.py, train/distill_batch.py):
the byte alignment on hand-made vocabularies, the KL on hand-made logits, runs of a tiny
teacher/student pair on real Russian text, and bad input."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lingraft.config import ConfigError, build_config
from lingraft.train.config import TrainConfig
from lingraft.train.distill import kl_at_pairs
from lingraft.train.distill_batch import (PAIRS, TEACHER_IDS, TEACHER_POSITIONS, ByteTable, TeacherInputs,
                                          complete_prefix, document_segments, segment_pairs)
from lingraft.train.metrics_log import read_metrics
from tests.integration.train_tiny import export_and_compare, losses

CYR = "п".encode()                      # two bytes: b"\xd0\xbf"


# -- the alignment on hand-made vocabularies -----------------------------------------------------

def test_complete_prefix_drops_a_character_cut_at_the_end():
    text = np.frombuffer("aп".encode() + "ж".encode()[:1], dtype=np.uint8)
    assert complete_prefix(text) == 3
    assert complete_prefix(np.frombuffer("aпж".encode(), dtype=np.uint8)) == 5
    assert complete_prefix(np.frombuffer("€".encode()[:2], dtype=np.uint8)) == 0


def test_a_sample_that_starts_mid_character_is_read_from_the_first_whole_one():
    # ids: 0 = EOS (no bytes), 1 = the tail byte of "п", 2 = "п", 3 = "ab", 4 = " "
    table = ByteTable.of([b"", CYR[1:], CYR, b"ab", b" "])
    ids = np.array([1, 3, 2, 0, 3, 4])
    position_ids = np.array([0, 1, 2, 3, 0, 1])          # the second document starts at index 4
    first, second = document_segments(0, ids, position_ids, table)
    assert first.positions.tolist() == [1, 2] and first.ends.tolist() == [2, 4]   # EOS (index 3) reads nothing
    assert first.text.tobytes() == b"ab" + CYR
    assert second.positions.tolist() == [4, 5] and second.text.tobytes() == b"ab "


def test_pairs_end_at_the_same_byte_and_survive_a_dummy_prefix():
    model = ByteTable.of([b"", b"ab", b"c", b"de"])
    segment = document_segments(0, np.array([1, 2, 3]), np.arange(3), model)[0]       # "ab|c|de"
    teacher = ByteTable.of([b"a", b"bc", b"d", b"e", b" ab", b"x"])
    model_pos, teacher_pos = segment_pairs(segment, np.array([0, 1, 2, 3]), teacher)   # "a|bc|d|e"
    assert model_pos.tolist() == [1, 2] and teacher_pos.tolist() == [1, 3]
    # SentencePiece reads " ab|c|de" (a dummy prefix): shifted back, the same pairs.
    model_pos, teacher_pos = segment_pairs(segment, np.array([4, 2, 3]), ByteTable.of([b"", b"", b"c", b"de", b" ab"]))
    assert model_pos.tolist() == [0, 1, 2] and teacher_pos.tolist() == [0, 1, 2]
    # A tokenizer that rewrote the text ("ab|x|de"): no pair from the first differing byte on.
    model_pos, _ = segment_pairs(segment, np.array([4, 5, 3]), ByteTable.of([b"", b"", b"", b"de", b"ab", b"x"]))
    assert model_pos.tolist() == [0]


def test_teacher_inputs_keep_documents_apart_and_skip_masked_labels():
    model = ByteTable.of([b"", b"ab", b"cd"])                      # 0 = EOS
    teacher = ByteTable.of([b"a", b"b", b"c", b"d"])
    inputs = TeacherInputs(model, teacher, lambda texts: [[ord(ch) - ord("a") for ch in t] for t in texts])
    batch = {"input_ids": torch.tensor([[1, 2, 0, 2, 1], [2, 2, 2, 2, 2]]),
             "position_ids": torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]),
             "labels": torch.tensor([[2, 0, 2, 1, -100], [2, 2, 2, 2, 2]])}
    out = inputs(batch)
    assert out[TEACHER_IDS][0].tolist() == [0, 1, 2, 3, 2, 3, 0, 1, 0, 0]          # "abcd" "cdab", padded
    assert out[TEACHER_POSITIONS][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    # The EOS is not paired (the last text token is), nor is index 4, whose label is masked.
    assert out[PAIRS][0].tolist() == [[0, 1], [1, 3], [3, 5], [-1, -1], [-1, -1]]
    assert out[PAIRS][1, :, 0].tolist() == [0, 1, 2, 3, 4]


# -- the KL on hand-made logits -------------------------------------------------------------------

def test_kl_at_pairs_is_teacher_to_model_on_the_shared_columns():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 4, 3)
    pairs = torch.tensor([[[0, 1], [2, 3]], [[1, 0], [-1, -1]]])
    model_cols, teacher_cols = torch.tensor([4, 0, 1]), torch.tensor([0, 1, 2])
    got = kl_at_pairs(logits, teacher, pairs, model_cols, teacher_cols, denominator=3.0)
    want = 0.0
    for b, j, i in ((0, 0, 1), (0, 2, 3), (1, 1, 0)):
        p = torch.softmax(teacher[b, i], -1)
        q = torch.softmax(logits[b, j, model_cols].detach(), -1)
        want += float((p * (p.log() - q.log())).sum())
    assert got.item() == pytest.approx(want / 3, rel=1e-5)
    got.backward()
    assert logits.grad[:, :, [2, 3]].abs().sum() == 0 and logits.grad[1, 0].abs().sum() == 0   # unpaired, unshared
    diagonal = torch.tensor([[[0, 0], [2, 2]], [[1, 1], [-1, -1]]])
    same = kl_at_pairs(teacher[:, :, [1, 2, 0]], teacher, diagonal, torch.tensor([2, 0, 1]), teacher_cols, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    none = torch.full((2, 0, 2), -1)
    assert kl_at_pairs(logits, teacher, none, model_cols, teacher_cols, 1.0).item() == 0.0


# -- runs of a tiny pair (local backend) ----------------------------------------------------------

@pytest.fixture(scope="module")
def pair(shared, tmp_path_factory):
    from tests.integration.distill_tiny import make_distill_pair
    return make_distill_pair(shared, tmp_path_factory.mktemp("distill_pair"))


def run_config(pair, out_dir, **overrides):
    from tests.integration.train_tiny import dist_run_config
    cfg = dist_run_config(pair.student, pair.data, out_dir, **{
        "backend": "local", "trainable": "new_rows", "max_steps": 6, "launch.nproc_per_node": 1,
        "checkpoint.every_steps": 3, "optim.lr": 0.002, **overrides})
    return build_config(TrainConfig, overrides=cfg)


def new_row_ids(pair) -> set[int]:
    from lingraft.train.model_setup import copies_old_row
    from lingraft.vocabulary.token_map import TokenMap
    return set(torch.nonzero(~copies_old_row(TokenMap.load(pair.student))).flatten().tolist())


def kl_on_fixed_batch(pair, model_dir, samples: int = 8) -> float:
    """The distillation KL of `model_dir` on the data's first samples (one batch, no gradients)."""
    from transformers import AutoModelForCausalLM

    from lingraft.data_prep.dataset import PackedDataset
    from lingraft.train.distill import build_distiller, teacher_inputs
    from lingraft.train.loss import micro_batch_loss
    cfg = run_config(pair, pair.student.parent / "unused", **{"distill.weight": 1.0})
    first = list(PackedDataset(pair.data, shuffle=False))[:samples]
    batch = {k: torch.stack([torch.as_tensor(s[k]) for s in first]) for k in ("input_ids", "labels", "position_ids")}
    batch.update(teacher_inputs(cfg)(batch))
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    distiller = build_distiller(cfg, model.config.vocab_size, torch.device("cpu"), torch.float32, "sdpa")
    with torch.no_grad():
        micro_batch_loss(model, batch, "sdpa", True, distill=distiller)
    return distiller.step_metrics(0, torch.device("cpu"))["distill_kl"]


def test_distillation_alone_lowers_the_kl_and_leaves_old_rows_alone(pair, tmp_path):
    from lingraft.train.loop import train
    train(run_config(pair, tmp_path / "run", **{"distill.weight": 1.0, "distill.ce_weight": 0.0}))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["loss"] == pytest.approx(r["distill_kl"], rel=1e-5) for r in rows)      # instead of the CE
    assert all(r["distill_pairs"] > 100 and math.isfinite(r["ce"]) for r in rows)
    changed = export_and_compare(tmp_path / "run", pair.student, tmp_path / "hf")
    # Each step reads other samples, so the logged KL is noisy: compare the models on one batch.
    before, after = kl_on_fixed_batch(pair, pair.student), kl_on_fixed_batch(pair, tmp_path / "hf")
    assert after < 0.9 * before, (before, after)
    new = new_row_ids(pair)
    assert changed["model.embed_tokens.weight"] and changed["model.embed_tokens.weight"] <= new
    assert changed["lm_head.weight"] <= new                                       # old rows bit-identical
    assert not any(v for k, v in changed.items() if k not in ("model.embed_tokens.weight", "lm_head.weight"))


def test_the_chunk_term_alone_trains_new_head_rows(pair, tmp_path):
    """The shared-token KL cannot reach the head's new rows; the chunk-likelihood KL does."""
    from lingraft.train.loop import train
    train(run_config(pair, tmp_path / "run", max_steps=3,
                     **{"distill.weight": 0.0, "distill.chunk_weight": 1.0, "distill.ce_weight": 0.0}))
    rows = read_metrics(tmp_path / "run")
    assert all(r["loss"] == pytest.approx(r["distill_chunk_kl"], rel=1e-5) and r["distill_chunk_kl"] > 0
               for r in rows)
    changed = export_and_compare(tmp_path / "run", pair.student, tmp_path / "hf")
    assert changed["lm_head.weight"] and changed["lm_head.weight"] <= new_row_ids(pair)


def test_beside_the_cross_entropy_and_an_exact_resume(pair, tmp_path):
    from lingraft.train.loop import train
    settings = {"distill.weight": 0.5, "trainable": "embeddings"}
    train(run_config(pair, tmp_path / "ref", **settings))
    # Stopped after step 2 (warmup covers steps 1-2, so the lr matches the reference's), then resumed.
    train(run_config(pair, tmp_path / "split", max_steps=2, **settings))
    train(run_config(pair, tmp_path / "split", **settings))                    # resumed
    train(run_config(pair, tmp_path / "plain", trainable="embeddings"))
    rows = read_metrics(tmp_path / "ref")
    assert all(r["loss"] == pytest.approx(r["ce"] + 0.5 * r["distill_kl"], rel=1e-5) for r in rows)
    assert losses(tmp_path / "split") == losses(tmp_path / "ref")
    assert rows[0]["ce"] == pytest.approx(losses(tmp_path / "plain")[0][1], rel=1e-6)   # the same CE at step 1
    assert "distill_kl" not in read_metrics(tmp_path / "plain")[0]


def test_adapters_learn_to_read_the_new_rows(pair, tmp_path):
    """trainable=lora: the body adapts to the new tokenisation, the tables stay as init made them;
    with copy_share, one sample of each micro-batch is a copy task, read whole by the teacher too."""
    from lingraft.train.loop import train
    common = {"trainable": "lora", "max_steps": 12, "optim.lr": 0.004, "checkpoint.every_steps": 12,
              "distill.weight": 1.0, "distill.ce_weight": 0.0}
    train(run_config(pair, tmp_path / "run", **common))
    train(run_config(pair, tmp_path / "copies", **{**common, "max_steps": 2, "copy_share": 0.5}))
    assert all(r["loss"] == pytest.approx(r["distill_kl"], rel=1e-5) for r in read_metrics(tmp_path / "run"))
    copies, plain = read_metrics(tmp_path / "copies"), read_metrics(tmp_path / "run")[:2]
    # The same samples, half of them rewritten: the teacher reads the rewritten text (other pairs, another KL).
    assert all(c["distill_pairs"] > 100 and math.isfinite(c["loss"]) for c in copies)
    assert [c["distill_kl"] for c in copies] != [p["distill_kl"] for p in plain]
    changed = export_and_compare(tmp_path / "run", pair.student, tmp_path / "hf")
    assert not changed["model.embed_tokens.weight"] and not changed["lm_head.weight"]
    assert changed["model.layers.0.self_attn.q_proj.weight"] and changed["model.layers.1.mlp.down_proj.weight"]
    # A random tiny teacher: rank-8 adapters over 12 steps take 7% off (the rows took more, above).
    assert kl_on_fixed_batch(pair, tmp_path / "hf") < 0.95 * kl_on_fixed_batch(pair, pair.student)


# -- bad input --------------------------------------------------------------------------------------

def test_config_errors_name_the_setting(tmp_path):
    base = {"model": str(tmp_path), "data": str(tmp_path), "out_dir": str(tmp_path), "max_steps": 1}
    with pytest.raises(ConfigError, match="distill.ce_weight"):
        build_config(TrainConfig, overrides={**base, "distill": {"ce_weight": 0.0}})
    with pytest.raises(ConfigError, match="distill.weight"):
        build_config(TrainConfig, overrides={**base, "distill": {"weight": -1.0}})


def test_no_teacher_is_an_error_before_launching(pair, tmp_path, run_cli):
    orphan = tmp_path / "orphan"                        # the student without the init manifest naming its source
    shutil.copytree(pair.student, orphan)
    (orphan / "manifest.json").unlink()
    args = ["train", "--model", orphan, "--data", pair.data, "--out-dir", tmp_path / "o", "--max-steps", "1",
            "--backend", "local", "--trainable", "new_rows", "--set", "distill.weight=1"]
    code, _, err = run_cli(*args)
    assert code == 1 and "needs a teacher" in err and "distill.teacher" in err and not (tmp_path / "o").exists()
    code, _, err = run_cli(*args, "--set", f"distill.teacher={tmp_path / 'nowhere'}")
    assert code == 1 and "distill.teacher" in err and "no config.json" in err


def test_the_init_manifest_names_the_teacher(pair):
    from lingraft.train.distill import resolve_teacher
    manifest = json.loads((pair.student / "manifest.json").read_text())
    spec = resolve_teacher(run_config(pair, pair.student.parent / "unused", **{"distill.weight": 1.0}))
    assert str(spec.model) == str(pair.teacher) == manifest["inputs"]["model"]["path"]
    assert spec.tokenizer == str(pair.teacher)


# -- 2 CPU ranks: DeepSpeed ZeRO-1/2/3 (a ZeRO-3 teacher partitioned by its own engine) and FSDP2 ----------

def dist_configs(pair, folder, backend: str, runs: dict[str, dict]) -> list[str]:
    from tests.integration.train_tiny import dist_run_config, write_configs
    common = {"backend": backend, "trainable": "new_rows", "optim.lr": 0.003, "distill.weight": 1.0,
              "distill.ce_weight": 0.0}
    return write_configs(folder, {name: dist_run_config(pair.student, pair.data, folder / name.split("_")[0],
                                                        **{**common, **extra}) for name, extra in runs.items()})


def assert_old_rows_kept_and_kl_lowered(pair, run_dir, folder) -> None:
    changed = export_and_compare(run_dir, pair.student, folder / "hf")
    new = new_row_ids(pair)
    assert changed["model.embed_tokens.weight"] and changed["model.embed_tokens.weight"] <= new
    assert changed["lm_head.weight"] <= new
    assert kl_on_fixed_batch(pair, folder / "hf") < 0.95 * kl_on_fixed_batch(pair, pair.student)


@pytest.mark.slow
def test_zero_stages_agree_and_zero3_resumes(pair, tmp_path):
    from tests.integration.train_tiny import TRAIN_RUNS, free_port, run_launcher
    configs = dist_configs(pair, tmp_path, "deepspeed", {
        "z1": {"zero_stage": 1}, "z2": {"zero_stage": 2},
        "z3_first": {"zero_stage": 3, "max_steps": 2}, "z3_second": {"zero_stage": 3},
        "lora": {"zero_stage": 2, "trainable": "lora"}})
    run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN_RUNS, *configs],
                 timeout=600, TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    runs = {name: read_metrics(tmp_path / name) for name in ("z1", "z2", "z3")}
    assert [r["step"] for r in runs["z3"]] == [1, 2, 3, 4]
    for name in ("z2", "z3"):
        for mine, ref in zip(runs[name], runs["z1"]):
            assert mine["distill_pairs"] == ref["distill_pairs"] > 100
            assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4), (name, runs)
    assert_old_rows_kept_and_kl_lowered(pair, tmp_path / "z3", tmp_path)
    # Adapters under ZeRO-2: the body learns, the tables stay as they were.
    assert all(r["distill_pairs"] > 100 for r in read_metrics(tmp_path / "lora"))
    changed = export_and_compare(tmp_path / "lora", pair.student, tmp_path / "lora_hf")
    assert not changed["model.embed_tokens.weight"] and not changed["lm_head.weight"]
    assert changed["model.layers.0.mlp.up_proj.weight"]


@pytest.mark.slow
def test_fsdp_matches_one_process(pair, tmp_path):
    import yaml

    from lingraft.train.loop import train
    from tests.integration.train_tiny import TRAIN_RUNS, run_launcher
    configs = dist_configs(pair, tmp_path, "fsdp", {"fsdp": {}})
    run_launcher(["torchrun", "--standalone", "--nproc_per_node", "2", TRAIN_RUNS, *configs], timeout=600)
    # One local process reading each step's 8 samples at once: rank r's micro-batches hold samples r, r+2, ...
    local = yaml.safe_load(open(configs[0]))
    local.update(backend="local", micro_batch_size=8, grad_accum_steps=1, out_dir=str(tmp_path / "local"))
    local["launch"]["nproc_per_node"] = 1
    train(build_config(TrainConfig, overrides=local))
    rows, reference = read_metrics(tmp_path / "fsdp"), read_metrics(tmp_path / "local")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for mine, ref in zip(rows, reference):
        assert mine["distill_pairs"] == ref["distill_pairs"] > 100
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4), (rows, reference)
    assert_old_rows_kept_and_kl_lowered(pair, tmp_path / "fsdp", tmp_path)

"""`lingraft fit-head` end to end on a tiny tied Llama given a Russian vocabulary by `init --method distill`."""
from __future__ import annotations

import json

import torch

from lingraft.vocabulary.token_map import TokenMap
from tests.helpers import all_tensors, save_tiny_llama

HEAD = "lm_head.weight"


def test_fit_head_refits_only_the_learnt_head_rows(tied_model, new_tokenizer_dir, tmp_path, run_cli, ud_corpus):
    """After `init --method distill`, `fit-head` changes the learnt rows of the head and nothing
    else: every other tensor, the kept head rows and the side files come over unchanged."""
    init = tmp_path / "init"
    assert run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir, "--out", init, "--corpus", ud_corpus,
                   "--distill-passages", 24, "--distill-steps", 2, "--head-fit-epochs", 1)[0] == 0
    out = tmp_path / "refit"
    code, stdout, err = run_cli("fit-head", "--model", init, "--base", tied_model, "--corpus", ud_corpus, "--out", out,
                                "--passages", 48, "--epochs", 3, "--lr", 0.01, "--precision", "bf16",
                                "--device", "cpu", "--warm-start", "--warmup-epochs", 1)
    assert code == 0, err
    assert "learnt head rows refitted" in stdout
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["precision"] == "bfloat16" and metrics["refitted"] and metrics["best_epoch"] >= 1
    assert metrics["held_out_best"] < metrics["held_out_start"]     # beat the rows init wrote
    assert metrics["started_from"] == "head_map.safetensors"        # init's fitted map: a warm start
    assert (out / "head_map.safetensors").read_bytes() != (init / "head_map.safetensors").read_bytes()
    before, after = all_tensors(init), all_tensors(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before if name != HEAD)
    provenance = TokenMap.load(out / "token_map.safetensors").provenance
    learnt = torch.tensor([code not in (0, 5) for code in provenance.tolist()])   # not kept, not special
    rows = provenance.numel()
    assert torch.equal(before[HEAD][:rows][~learnt], after[HEAD][:rows][~learnt])
    assert not torch.equal(before[HEAD][:rows][learnt], after[HEAD][:rows][learnt])
    for name in ("config.json", "tokenizer.json", "token_map.safetensors", "generation_config.json"):
        assert (init / name).read_bytes() == (out / name).read_bytes(), name


def test_fit_head_keeps_the_models_rows_when_no_epoch_beats_them(tied_model, new_tokenizer_dir, tmp_path, run_cli,
                                                                  ud_corpus):
    init = tmp_path / "init"
    assert run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir, "--out", init, "--corpus", ud_corpus,
                   "--distill-passages", 24, "--distill-steps", 2, "--head-fit-epochs", 2, "--head-fit-lr", 0.01)[0] == 0
    out = tmp_path / "kept"
    # a learning rate this small leaves a cold map at its start, the first-piece rows init's fit already beat
    code, stdout, err = run_cli("fit-head", "--model", init, "--base", tied_model, "--corpus", ud_corpus, "--out", out,
                                "--passages", 24, "--epochs", 1, "--lr", 1e-12, "--device", "cpu",
                                "--warm-start", "false")
    assert code == 0, err
    assert "learnt head rows kept" in stdout
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert not metrics["refitted"] and metrics["held_out_best"] == metrics["held_out_start"]
    assert metrics["started_from"] == "first-piece rows"
    assert torch.equal(all_tensors(init)[HEAD], all_tensors(out)[HEAD])
    # the kept rows keep the map that made them
    assert (out / "head_map.safetensors").read_bytes() == (init / "head_map.safetensors").read_bytes()


def test_fit_head_refuses_a_tied_head_and_a_folder_without_a_token_map(tied_model, untied_model, new_tokenizer_dir,
                                                                       tmp_path, run_cli, ud_corpus):
    mean = tmp_path / "mean"
    assert run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir, "--out", mean,
                   "--method", "mean")[0] == 0
    code, _, err = run_cli("fit-head", "--model", mean, "--base", tied_model, "--corpus", ud_corpus,
                           "--out", tmp_path / "a")
    assert code != 0 and "ties its head" in err
    code, _, err = run_cli("fit-head", "--model", untied_model, "--base", untied_model, "--corpus", ud_corpus,
                           "--out", tmp_path / "b")
    assert code != 0 and "has no token_map.safetensors" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fit_head_refuses_a_base_of_another_width(tied_model, old_tokenizer, new_tokenizer_dir, tmp_path, run_cli,
                                                  ud_corpus):
    init = tmp_path / "init"
    assert run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir, "--out", init, "--corpus", ud_corpus,
                   "--distill-passages", 8, "--distill-steps", 0, "--head-fit-epochs", 1)[0] == 0
    wide = save_tiny_llama(tmp_path / "wide", vocab=len(old_tokenizer), tied=True, shard=None, hidden_size=48)
    old_tokenizer.save_pretrained(str(wide))
    code, _, err = run_cli("fit-head", "--model", init, "--base", wide, "--corpus", ud_corpus, "--out", tmp_path / "c")
    assert code != 0 and "head is 48 wide, the model's 32" in err and not (tmp_path / "c").exists()


def test_fit_head_schedule_defaults_follow_where_the_map_starts():
    from lingraft.vocabulary.fit_head_config import COLD, WARM, FitHeadConfig
    cfg = FitHeadConfig(model="m", base="b", corpus=["c"], out="o")
    assert cfg.schedule(warm=True) == WARM and cfg.schedule(warm=False) == COLD
    assert WARM.epochs < COLD.epochs and WARM.lr < COLD.lr
    given = FitHeadConfig(model="m", base="b", corpus=["c"], out="o", epochs=3)
    assert (given.schedule(warm=True).epochs, given.schedule(warm=True).lr) == (3, WARM.lr)

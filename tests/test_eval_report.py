"""`lingraft eval tokenizer`, `speed`, `report` and `harness` on two tiny models."""
from __future__ import annotations

import json

import pytest

from tests.helpers import chat_tokenizer, tiny_chat_model


@pytest.fixture(scope="module")
def models(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tok = chat_tokenizer(shared)
    return {name: tiny_chat_model(root / name, tok, seed=seed) for seed, name in enumerate(("original", "adapted"))}


def test_side_by_side_report(models, shared, tmp_path, run_cli):
    ud = shared / "ru_text" / "ud_russian_sentences.jsonl"
    prompts = shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"
    results = []
    for name, folder in models.items():
        for task, args in (("bpc", ["--data", ud, "--max-docs", 3, "--name", "ud"]),
                           ("tokenizer", ["--data", ud, "--max-chars", 2000, "--name", "ud"])):
            out = tmp_path / f"{name}-{task}.json"
            assert run_cli("eval", task, "--model", f"{name}={folder}", "--out", out, *args)[0] == 0
            results.append(out)
    speed = tmp_path / "speed.json"
    code, stdout, err = run_cli("eval", "speed", "--model", f"adapted={models['adapted']}", "--baseline",
                                f"original={models['original']}", "--data", prompts, "--text-field", "instruction",
                                "--max-prompts", 3, "--max-new-tokens", 6, "--ignore-eos", "--out", speed)
    assert code == 0, err
    result = json.loads(speed.read_text())
    assert result["new_tokens"] == result["baseline"]["new_tokens"] == 18       # 3 prompts x 6, EOS ignored
    assert result["chars_per_s_vs_baseline"] == pytest.approx(result["chars_per_s"] / result["baseline"]["chars_per_s"])
    results.append(speed)

    out = tmp_path / "report"
    code, stdout, err = run_cli("eval", "report", *sum((["--result", r] for r in results), []), "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == ["original", "adapted"]
    assert report["metrics"] == ["bpc/ud/bits_per_char", "bpc/ud/bits_per_byte", "tokenizer/ud/chars_per_token",
                                 "tokenizer/ud/tokens_per_word", "speed/rulm_ru_alpaca_seed_tasks/tokens_per_s",
                                 "speed/rulm_ru_alpaca_seed_tasks/chars_per_s"]
    speed_key = "speed/rulm_ru_alpaca_seed_tasks/tokens_per_s"    # the baseline's row comes from the speed run
    assert report["values"]["original"][speed_key] == result["baseline"]["tokens_per_s"]
    assert report["lower_is_better"]["bpc/ud/bits_per_char"] is True
    same_tokenizer = report["values"]["original"]["tokenizer/ud/chars_per_token"]
    assert report["values"]["adapted"]["tokenizer/ud/chars_per_token"] == same_tokenizer
    table = (out / "report.md").read_text()
    assert table.startswith("| metric | original | adapted |") and "| bpc/ud/bits_per_char ↓ |" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("eval", "report", "--result", tmp_path, "--out", tmp_path / "again")[0] == 0   # a folder
    assert json.loads((tmp_path / "again" / "report.json").read_text())["values"] == report["values"]
    code, _, err = run_cli("eval", "report", "--result", results[0], "--result", results[0], "--out", out)
    assert code == 1 and "twice" in err


def test_harness_needs_lm_eval(models, tmp_path, run_cli, monkeypatch):
    import lingraft.evaluation.harness
    from lingraft.evaluation.config import HarnessConfig
    from lingraft.evaluation.harness import harness_command
    cfg = HarnessConfig(model=str(models["adapted"]), tasks=["arc_easy"], out=str(tmp_path), limit=5)
    cmd = harness_command(cfg)
    assert cmd[1:5] == ["-m", "lm_eval", "--model", "hf"] and f"pretrained={models['adapted']}" in cmd[6]
    monkeypatch.setattr(lingraft.evaluation.harness, "harness_installed", lambda: False)
    code, _, err = run_cli("eval", "harness", "--model", models["adapted"], "--tasks", "arc_easy", "--out", tmp_path)
    assert code == 1 and "pip install lm-eval" in err and "lm_eval --model hf --model_args pretrained=" in err

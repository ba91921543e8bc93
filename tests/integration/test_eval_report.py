"""`lingraft eval tokenizer`, `speed`, `report` and `harness` on two tiny models."""
from __future__ import annotations

import json

import pytest

from lingraft.evaluation.results import read_results
from tests.helpers import chat_tokenizer, tiny_chat_model


@pytest.fixture(scope="module")
def models(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tok = chat_tokenizer(shared)
    return {name: tiny_chat_model(root / name, tok, seed=seed) for seed, name in enumerate(("original", "adapted"))}


def test_side_by_side_report(models, shared, tmp_path, run_cli):
    ud = shared / "ru_text" / "ud_russian_sentences.jsonl"
    prompts = shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"
    both = [arg for name, folder in models.items() for arg in ("--model", f"{name}={folder}")]
    outs = [tmp_path / "bpc", tmp_path / "tokenizer"]
    assert run_cli("eval", "bpc", *both, "--data", f"ud={ud}", "--max-docs", 3, "--out", outs[0])[0] == 0
    assert run_cli("eval", "tokenizer", *both, "--data", f"ud={ud}", "--max-chars", 2000, "--out", outs[1])[0] == 0
    speed = tmp_path / "speed"
    code, stdout, err = run_cli("eval", "speed", "--model", f"adapted={models['adapted']}", "--baseline",
                                f"original={models['original']}", "--data", prompts, "--text-field", "instruction",
                                "--max-prompts", 3, "--max-new-tokens", 6, "--ignore-eos", "--out", speed)
    assert code == 0, err
    base, adapted = read_results(speed)                         # the baseline runs first
    assert (base.model, adapted.model, adapted.meta["baseline"]) == ("original", "adapted", "original")
    assert adapted.metrics["new_tokens"] == base.metrics["new_tokens"] == 18       # 3 prompts x 6, EOS ignored
    assert adapted.metrics["chars_per_s_vs_baseline"] == pytest.approx(
        adapted.metrics["chars_per_s"] / base.metrics["chars_per_s"])
    assert "chars_per_s_vs_baseline" not in base.metrics
    outs.append(speed)

    out = tmp_path / "report"
    code, stdout, err = run_cli("eval", "report", *sum((["--result", r] for r in outs), []), "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == ["original", "adapted"]
    assert report["metrics"] == ["bpc/ud/bits_per_char", "bpc/ud/bits_per_byte", "tokenizer/ud/chars_per_token",
                                 "tokenizer/ud/tokens_per_word", "speed/rulm_ru_alpaca_seed_tasks/tokens_per_s",
                                 "speed/rulm_ru_alpaca_seed_tasks/chars_per_s"]
    speed_key = "speed/rulm_ru_alpaca_seed_tasks/tokens_per_s"    # the baseline's row comes from the speed run
    assert report["values"]["original"][speed_key] == base.metrics["tokens_per_s"]
    assert report["lower_is_better"]["bpc/ud/bits_per_char"] is True
    same_tokenizer = report["values"]["original"]["tokenizer/ud/chars_per_token"]
    assert report["values"]["adapted"]["tokenizer/ud/chars_per_token"] == same_tokenizer
    table = (out / "report.md").read_text()
    assert table.startswith("| metric | original | adapted |") and "| bpc/ud/bits_per_char ↓ |" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    merged = read_results(out)                                   # one result set: every record of the inputs
    assert [(r.task, r.model) for r in merged] == [(r.task, r.model) for o in outs for r in read_results(o)]
    assert run_cli("eval", "report", "--result", out / "results.jsonl", "--out", tmp_path / "again")[0] == 0
    assert json.loads((tmp_path / "again" / "report.json").read_text())["values"] == report["values"]
    code, _, err = run_cli("eval", "report", "--result", outs[0], "--result", outs[0], "--out", out)
    assert code == 1 and "twice" in err


def test_harness_needs_lm_eval(models, tmp_path, run_cli, monkeypatch):
    import lingraft.evaluation.harness
    from lingraft.evaluation.config import HarnessConfig
    from lingraft.evaluation.harness import harness_command
    cfg = HarnessConfig(model=models["adapted"], tasks=["arc_easy"], out=tmp_path, limit=5)
    cmd = harness_command(cfg)
    assert cmd[1:5] == ["-m", "lm_eval", "--model", "hf"] and f"pretrained={models['adapted']}" in cmd[6]
    monkeypatch.setattr(lingraft.evaluation.harness, "harness_installed", lambda: False)
    code, _, err = run_cli("eval", "harness", "--model", models["adapted"], "--tasks", "arc_easy", "--out", tmp_path)
    assert code == 1 and "pip install lm-eval" in err and "lm_eval --model hf --model_args pretrained=" in err

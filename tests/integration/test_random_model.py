"""`lingraft model random`: a loadable HF folder whose vocabulary and special ids come from the tokenizer."""
from __future__ import annotations

import json

TINY = ["--set", "architecture.hidden_size=16", "--set", "architecture.intermediate_size=32",
        "--set", "architecture.num_hidden_layers=1", "--set", "architecture.num_attention_heads=2",
        "--set", "architecture.num_key_value_heads=1"]


def test_random_model_around_a_real_tokenizer(run_cli, shared, tmp_path):
    from transformers import AutoModelForCausalLM

    from lingraft.vocabulary.loading import load_tokenizer
    out = tmp_path / "model"
    code, stdout, err = run_cli("model", "random", "--tokenizer", shared / "tokenizers" / "gpt2", "--out", out,
                                "--model-type", "qwen2", "--pad-to-multiple", "64", *TINY)
    assert code == 0, err
    tok = load_tokenizer(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == 50304 >= len(tok) == 50257
    assert model.config.eos_token_id == tok.eos_token_id == 50256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_vocab_size_and_unknown_keys_are_refused(run_cli, shared, tmp_path):
    code, _, err = run_cli("model", "random", "--tokenizer", shared / "tokenizers" / "gpt2", "--out", tmp_path / "m",
                           "--set", "architecture.vocab_size=10")
    assert code == 2 and "architecture.vocab_size: comes from the tokenizer" in err
    code, _, err = run_cli("model", "random", "--tokenizer", shared / "tokenizers" / "gpt2", "--out", tmp_path / "m",
                           "--model-type", "no-such-model")
    assert code == 1 and "model_type 'no-such-model'" in err
    assert not (tmp_path / "m").exists()

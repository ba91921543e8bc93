"""Tokenizer statistics: hand-computed counts, the MANIFEST reference figures, and the CLI."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.stats import count_text, parse_named_spec, tokenizer_stats
from lingraft.vocabulary.training import BYTE_PIECES


def tiny_spm_bpe(byte_fallback: bool) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE knowing only "▁", "a", "b" and "▁a" (plus <0xNN> pieces)."""
    pieces = ["<unk>", *(BYTE_PIECES if byte_fallback else []), "▁", "a", "b", "▁a"]
    vocab = {p: i for i, p in enumerate(pieces)}
    backend = Tokenizer(models.BPE(vocab, [("▁", "a")], unk_token="<unk>", fuse_unk=True,
                                   byte_fallback=byte_fallback))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_counts_by_hand(shared):
    text = ["a b ж"]                 # -> ▁a ▁ b ▁ <0xD0> <0xB6>  (or <unk> for ж without byte fallback)
    counts = count_text(text)
    assert (counts.chars, counts.bytes, counts.words) == (5, 6, 3)
    s = tokenizer_stats(tiny_spm_bpe(byte_fallback=True), text, counts)
    assert s.tokens == 6 and s.byte_fallback_tokens == 2 and s.unk_tokens == 0
    assert (s.chars_per_token, s.bytes_per_token, s.tokens_per_word) == (5 / 6, 1.0, 2.0)
    s = tokenizer_stats(tiny_spm_bpe(byte_fallback=False), text, counts)
    assert s.tokens == 5 and s.unk_tokens == 1 and s.unk_rate == 1 / 5 and s.byte_fallback_rate == 0.0
    # Byte-level: "Hello world мир" -> Hello Ġworld ĠÐ ¼ Ð¸ ÑĢ; "ĠÐ" and "¼" each hold half of "м".
    gpt2 = load_tokenizer(shared / "tokenizers" / "gpt2")
    text = ["Hello world мир"]
    s = tokenizer_stats(gpt2, text, count_text(text))
    assert (s.tokens, s.byte_fallback_tokens, s.unk_tokens) == (6, 2, 0)
    assert s.tokens_per_word == 2.0 and s.bytes_per_token == 18 / 6
    # Special-token strings in the data are measured as plain text, not as one special token.
    text = ["<|endoftext|>"]
    assert tokenizer_stats(gpt2, text, count_text(text)).tokens > 1


def test_named_specs():
    assert parse_named_spec("m=/x/tokenizer.model") == ("m", "/x/tokenizer.model")
    assert parse_named_spec("/t/llama3/tokenizer.json.xz") == ("llama3", "/t/llama3/tokenizer.json.xz")
    assert parse_named_spec("/t/mistral/mistral7b_v0.1_tokenizer.model")[0] == "mistral7b_v0.1_tokenizer"


def test_cli_reproduces_reference_tokens_per_word(run_cli, shared, tmp_path):
    """MANIFEST.md: on the UD Russian sentences (61,683 words) GPT-2 7.31, Mistral 2.85,
    Llama-3 2.32 and darulm-32k 1.84 tokens per word."""
    t = shared / "tokenizers"
    out = tmp_path / "stats.json"
    code, stdout, err = run_cli(
        "tokenizer", "stats", "--data", shared / "ru_text" / "ud_russian_sentences.jsonl", "--out", out,
        "--tokenizer", t / "gpt2", "--tokenizer", f"mistral={t / 'mistral' / 'mistral7b_v0.1_tokenizer.model'}",
        "--tokenizer", t / "llama3" / "tokenizer.json.xz", "--tokenizer", f"darulm={t / 'ruadapt_darulm_32k_bpe'}")
    assert code == 0, err
    report = json.loads(out.read_text(encoding="utf-8"))
    assert list(report) == ["gpt2", "mistral", "llama3", "darulm"]
    assert {name: round(r["tokens_per_word"], 2) for name, r in report.items()} == \
        {"gpt2": 7.31, "mistral": 2.85, "llama3": 2.32, "darulm": 1.84}
    assert all(r["words"] == 61_683 and r["chars_per_token"] > 0 for r in report.values())
    assert report["mistral"]["unk_rate"] == 0.0 and 0 < report["mistral"]["byte_fallback_rate"] < 0.01
    assert "61,683 words" in stdout and "tok/word" in stdout and "darulm" in stdout


@pytest.mark.parametrize("args, message", [
    (["--tokenizer", "/no/such/tokenizer.model"], "/no/such/tokenizer.model: no such tokenizer"),
    (["--tokenizer", "a=/x", "--tokenizer", "a=/y"], "names clash"),
])
def test_cli_bad_input(run_cli, shared, args, message):
    code, _, err = run_cli("tokenizer", "stats", "--data", shared / "ru_text" / "ud_russian_sentences.jsonl",
                           "--max-chars", "1000", *args)
    assert code == 1 and message in err and err.count("\n") == 1

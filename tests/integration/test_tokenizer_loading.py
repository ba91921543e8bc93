"""load_tokenizer on every shared format, fingerprints, kinds, and clean errors on bad input."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from lingraft.errors import LingraftError
from lingraft.vocabulary.loading import load_tokenizer, save_tokenizer, tokenizer_fingerprint, tokenizer_kind

PROBE = "Привет, мир! Hello, world — 42 ёжика.\nВторая строка\tс табуляцией 😀"


@pytest.fixture(scope="module")
def toks(shared):
    t = shared / "tokenizers"
    return {
        "llama3": load_tokenizer(t / "llama3" / "tokenizer.json.xz"),
        "mistral": load_tokenizer(t / "mistral" / "mistral7b_v0.1_tokenizer.model"),
        "gpt2": load_tokenizer(t / "gpt2"),
        "darulm": load_tokenizer(t / "ruadapt_darulm_32k_bpe"),
    }


@pytest.fixture(scope="module")
def ud_sentences(shared):
    with open(shared / "ru_text" / "ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh][:400]


@pytest.mark.parametrize("name, size, kind", [
    ("llama3", 128256, "byte_level_bpe"), ("mistral", 32000, "sentencepiece_bpe"),
    ("gpt2", 50257, "byte_level_bpe"), ("darulm", 32000, "sentencepiece_bpe")])
def test_each_shared_format_loads_as_fast_tokenizer(toks, name, size, kind):
    tok = toks[name]
    assert tok.is_fast
    assert len(tok) == size
    assert tokenizer_kind(tok) == kind
    assert tok.decode(tok.encode(PROBE, add_special_tokens=False)) == PROBE


def test_known_token_ids(toks):
    # Published ids: GPT-2 and Llama-3 encode "Hello world" as two tokens.
    assert toks["gpt2"].encode("Hello world", add_special_tokens=False) == [15496, 995]
    assert toks["llama3"].encode("Hello world", add_special_tokens=False) == [9906, 1917]
    # Mistral prepends <s> like its Hugging Face release does.
    assert toks["mistral"].encode("Hello")[0] == toks["mistral"].bos_token_id == 1
    assert toks["mistral"].unk_token == "<unk>" and toks["mistral"].eos_token == "</s>"


def test_sentencepiece_conversion_encodes_like_sentencepiece(shared, toks, ud_sentences):
    # darulm's .model normalises with NFKC and collapses whitespace; the conversion must honour it.
    path = shared / "tokenizers" / "ruadapt_darulm_32k_bpe" / "tokenizer.model"
    converted = load_tokenizer(path)
    reference = spm.SentencePieceProcessor(model_file=str(path))
    texts = ud_sentences + ["  ｆｕｌｌｗｉｄｔｈ  ①  spaces\n\n", "漢字 and 😀 need byte fallback"]
    assert [converted.encode(t, add_special_tokens=False) for t in texts] == reference.encode(texts)
    # Mistral matches too, except inside runs of several spaces (sentencepiece splits words first;
    # the unsplit HF pipeline merges across them, exactly as Hugging Face's own conversion does).
    reference = spm.SentencePieceProcessor(
        model_file=str(shared / "tokenizers" / "mistral" / "mistral7b_v0.1_tokenizer.model"))
    texts = [t for t in ud_sentences if "  " not in t] + ["漢字 😀 \n\ttabs"]
    assert [toks["mistral"].encode(t, add_special_tokens=False) for t in texts] == reference.encode(texts)


def test_fingerprint_is_format_independent_and_survives_save(shared, toks, tmp_path):
    gpt2 = shared / "tokenizers" / "gpt2"
    by_file = load_tokenizer(gpt2 / "encoder.json")
    by_pair = load_tokenizer(f"{gpt2 / 'encoder.json'},{gpt2 / 'vocab.bpe'}")
    assert tokenizer_fingerprint(by_file) == tokenizer_fingerprint(by_pair) == tokenizer_fingerprint(toks["gpt2"])
    assert tokenizer_fingerprint(toks["gpt2"]) != tokenizer_fingerprint(toks["mistral"])
    for name in ("mistral", "darulm", "gpt2"):
        toks[name].chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        out = save_tokenizer(toks[name], tmp_path / name)
        reloaded = load_tokenizer(out)
        assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(toks[name]), name
        assert reloaded.chat_template == toks[name].chat_template
        assert reloaded.all_special_tokens == toks[name].all_special_tokens
        toks[name].chat_template = None


@pytest.mark.parametrize("spec, message", [
    ("missing/tokenizer.model", "no such tokenizer file or folder"),
    ("tokenizers/llama3/tokenizer.model", "not a SentencePiece model"),
    ("tokenizers/mistral", "several .model files"),
    ("tokenizers/gpt2/LICENSE", "unsupported tokenizer format"),
    ("eval/llmtf/ru_arena_hard_v0.1_questions.json", "not a readable tokenizers JSON"),
])
def test_bad_input_is_one_clear_line(shared, spec, message):
    with pytest.raises(LingraftError) as info:
        load_tokenizer(shared / spec)
    text = str(info.value)
    assert message in text and str(shared / spec) in text and "\n" not in text

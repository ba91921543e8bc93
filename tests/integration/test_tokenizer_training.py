"""Tokenizer training on a real slice of RusLit + FineWeb: both kinds, both styles, `like:` bases."""
from __future__ import annotations

import itertools
import json
import lzma

import pytest
from tokenizers import AddedToken
from transformers import AutoTokenizer

from lingraft.manifest import read_manifest
from lingraft.vocabulary.loading import load_tokenizer, tokenizer_kind
from lingraft.vocabulary.training import BYTE_PIECES, TrainParams, base_pipeline, scratch_pipeline, train_tokenizer

PROBES = ["Привет, мир!  Как дела?\n\tВсё хорошо — 42 рубля, 3.14 и ёЁ.",
          "English text: it's 2024, numbers 1234567 and CamelCase.",
          "Смесь языков: the model learns Russian. 漢字 😀 ½"]
TEMPLATE = "{% for m in messages %}<|role|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def corpus(shared) -> list[str]:
    """~300k chars: the opening of five RusLit works and 60 FineWeb documents."""
    with lzma.open(shared / "ru_text" / "ruslit.jsonl.xz", "rt", encoding="utf-8") as fh:
        ru = [json.loads(line)["text"][:50_000] for line in itertools.islice(fh, 5)]
    with open(shared / "en_text" / "fineweb_en_sample.jsonl", encoding="utf-8") as fh:
        en = [json.loads(line)["text"] for line in itertools.islice(fh, 60)]
    return ru + en


@pytest.fixture(scope="module")
def corpus_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "slice.jsonl"
    path.write_text("".join(json.dumps({"body": t}, ensure_ascii=False) + "\n" for t in corpus), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mistral(shared):
    tok = load_tokenizer(shared / "tokenizers" / "mistral" / "mistral7b_v0.1_tokenizer.model")
    tok.chat_template = TEMPLATE
    tok.add_tokens([AddedToken("<|role|>", special=False, normalized=False)])
    return tok


@pytest.fixture(scope="module")
def llama3(shared):
    tok = load_tokenizer(shared / "tokenizers" / "llama3" / "tokenizer.json.xz")
    tok.chat_template = TEMPLATE
    return tok


def assert_round_trip(tok):
    for text in PROBES:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text, (text, tok.convert_ids_to_tokens(ids))


def test_cli_trains_sentencepiece_bpe_from_scratch(run_cli, corpus_file, tmp_path):
    out = tmp_path / "spm_bpe"
    code, _, err = run_cli("tokenizer", "train", "--data", corpus_file, "--text-field", "body", "--out", out,
                           "--kind", "bpe", "--style", "sentencepiece", "--vocab-size", "3000",
                           "--max-chars", "200000", "--special-tokens", "<|im_start|>")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 3000 and tokenizer_kind(tok) == "sentencepiece_bpe"
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<|im_start|>", "<0x00>"]) == [0, 1, 2, 3, 4]
    assert "<|im_start|>" in tok.all_special_tokens
    assert_round_trip(tok)
    # An unseen character falls back to its UTF-8 bytes instead of <unk>.
    pieces = tok.convert_ids_to_tokens(tok.encode("漢", add_special_tokens=False))
    assert pieces == ["▁", "<0xE6>", "<0xBC>", "<0xA2>"]
    manifest = read_manifest(out)
    assert manifest["metrics"]["vocab_size"] == 3000
    assert manifest["metrics"]["corpus"]["chars"] == 200_000   # the budget is exact
    assert manifest["params"]["style"] == "sentencepiece"
    assert manifest["inputs"]["data[0]"]["sha256"]


@pytest.mark.parametrize("kind, style, expected", [
    ("bpe", "byte_level", "byte_level_bpe"), ("unigram", "byte_level", "byte_level_unigram"),
    ("unigram", "sentencepiece", "unigram")])
def test_scratch_kinds_and_styles(corpus, kind, style, expected):
    texts = corpus if kind == "bpe" else corpus[:3] + corpus[5:25]   # Unigram training is slower
    tok = train_tokenizer(texts, scratch_pipeline(style, []), TrainParams(kind, 2000))
    assert tokenizer_kind(tok) == expected
    assert 1900 <= len(tok) <= 2000   # Unigram may stop a little short of the target
    assert_round_trip(tok)


def test_bpe_like_mistral_keeps_specials_bytes_added_tokens_and_template(mistral, corpus):
    tok = train_tokenizer(corpus, base_pipeline(mistral, []), TrainParams("bpe", 3000, min_frequency=3))
    assert len(tok) == 3000 and tokenizer_kind(tok) == "sentencepiece_bpe"
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tok.convert_tokens_to_ids(BYTE_PIECES[:2]) == [3, 4]
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok.encode("Привет")[0] == 1                      # the base's BOS post-processor, remapped
    assert tok.chat_template == TEMPLATE
    assert tok.convert_ids_to_tokens(tok.encode("<|role|>", add_special_tokens=False)) == ["<|role|>"]
    assert_round_trip(tok)


def test_unigram_like_mistral(mistral, corpus):
    tok = train_tokenizer(corpus[:2] + corpus[5:20], base_pipeline(mistral, []), TrainParams("unigram", 2000))
    assert tokenizer_kind(tok) == "unigram"
    assert tok.encode("Привет")[0] == tok.bos_token_id == 1 and tok.chat_template == TEMPLATE
    assert tok.convert_ids_to_tokens(tok.encode("😀", add_special_tokens=False))[-4:] == \
        ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert_round_trip(tok)


@pytest.mark.parametrize("kind, expected", [("bpe", "byte_level_bpe"), ("unigram", "byte_level_unigram")])
def test_like_llama3_keeps_all_special_tokens(llama3, corpus, tmp_path, kind, expected):
    texts = corpus if kind == "bpe" else corpus[:2] + corpus[5:20]
    tok = train_tokenizer(texts, base_pipeline(llama3, ["<|new_special|>"]), TrainParams(kind, 2500))
    assert tokenizer_kind(tok) == expected
    old_specials = {t.content for t in llama3.added_tokens_decoder.values() if t.special}
    new_specials = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert len(old_specials) == 256 and old_specials | {"<|new_special|>"} == new_specials
    assert tok.convert_ids_to_tokens(tok.encode("<|eot_id|>", add_special_tokens=False)) == ["<|eot_id|>"]
    tok.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.chat_template == TEMPLATE
    assert_round_trip(reloaded)


def test_bad_training_input(run_cli, tmp_path, corpus_file):
    code, _, err = run_cli("tokenizer", "train", "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o")
    assert code == 1 and "nope.jsonl" in err and err.count("\n") == 1
    code, _, err = run_cli("tokenizer", "train", "--data", corpus_file, "--out", tmp_path / "o",
                           "--kind", "unigram", "--min-frequency", "3")
    assert code == 2 and "min_frequency" in err
    code, _, err = run_cli("tokenizer", "train", "--data", corpus_file, "--out", tmp_path / "o",
                           "--text-field", "missing")
    assert code == 1 and "no text" in err
    assert not (tmp_path / "o").exists()


def test_like_mistral_obeys_its_digit_and_byte_fallback_rules(mistral, corpus):
    """Mistral splits digits and spells characters it has no piece for ("\\n", "\\t") in byte pieces:
    a BPE trained like it must learn neither "▁1" / "00" nor longer pieces holding such a character."""
    from lingraft.vocabulary.drift_samples import number_lines
    tok = train_tokenizer(corpus + number_lines(10), base_pipeline(mistral, []), TrainParams("bpe", 3000))
    special = set(tok.all_special_tokens) | set(BYTE_PIECES)
    pieces = [p for p in tok.backend_tokenizer.get_vocab(with_added_tokens=False) if p not in special]
    assert not [p for p in pieces if len(p) > 1 and any(c.isdecimal() for c in p)]
    base_chars = {p for p in mistral.get_vocab() if len(p) == 1}
    assert not [p for p in pieces if len(p) > 1 and set(p) - base_chars]
    numbers = "In 1984, 2,048 of 10000 items cost $3.14 each.\n\tВ 1812 году"
    tokens = tok.convert_ids_to_tokens(tok.encode(numbers, add_special_tokens=False))
    assert [t for t in tokens if t not in BYTE_PIECES and any(c.isdecimal() for c in t)] == list("19842048100003141812")
    assert "\n" in tokens                    # alone, never joined to the text around it
    assert_round_trip(tok)


def test_like_a_digit_splitting_byte_level_base_still_merges_cyrillic(smollm2):
    """A byte-level base that splits digits (SmolLM2): the digit rule must act on the text, not on
    ByteLevel's byte characters, where the second bytes of "в", "м", "н", "о" look like "²", "¼",
    "½", "¾" and would be split off, leaving Russian words unmergeable."""
    from tokenizers import Tokenizer

    from lingraft.vocabulary.loading import backend_json
    from lingraft.vocabulary.training import _training_pre_tokenizer
    base = load_tokenizer(smollm2)
    pipeline = base_pipeline(base, [])
    assert pipeline.rules.splits_digits
    data = backend_json(base)
    data["pre_tokenizer"] = _training_pre_tokenizer(pipeline)
    pre = Tokenizer.from_str(json.dumps(data)).pre_tokenizer
    words = "Мой дядя самых честных правил, в 1812 году"
    pieces = [p for p, _ in pre.pre_tokenize_str(words)]
    assert pieces == ["ÐľÐ¾Ð¹", "ĠÐ´ÑıÐ´Ñı", "ĠÑģÐ°Ð¼ÑĭÑħ", "ĠÑĩÐµÑģÑĤÐ½ÑĭÑħ", "ĠÐ¿ÑĢÐ°Ð²Ð¸Ð»", ",", "ĠÐ²", "Ġ",
                      "1", "8", "1", "2", "ĠÐ³Ð¾Ð´Ñĥ"]

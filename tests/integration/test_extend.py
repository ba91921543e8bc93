"""LEP Extended vocabulary: old ids unchanged, protected English unchanged, Russian shorter."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from lingraft.errors import LingraftError
from lingraft.vocabulary.bpe_surgery import plan_extension, plan_shrink, reachable
from lingraft.vocabulary.extend import extend, reencoded_words
from lingraft.vocabulary.vocab_map import read_vocab_map
from lingraft.vocabulary.loading import backend_json, load_tokenizer
from tests.helpers import BASES, MIXED, base_tokenizer, english, extended, n_tokens, new_tokenizer, russian, \
    ud_sentences


@pytest.fixture(scope="module", params=sorted(BASES))
def case(request, shared):
    name = request.param
    return base_tokenizer(shared, name), extended(shared, name)


def test_old_tokens_keep_their_ids(case):
    base, variant = case
    n_old = len(base)
    assert variant.old_id_of_new_id[:n_old] == list(range(n_old))
    assert all(i == -1 for i in variant.old_id_of_new_id[n_old:])
    assert variant.counts["added"] == len(variant.tokenizer) - n_old > 300
    assert variant.tokenizer.convert_ids_to_tokens(list(range(n_old))) == base.convert_ids_to_tokens(list(range(n_old)))
    # Special/added tokens (Llama-3's 128000-128255, Mistral's <unk> <s> </s>) stay special, at their ids.
    old_added = {i: t.content for i, t in base.added_tokens_decoder.items()}
    assert {i: t.content for i, t in variant.tokenizer.added_tokens_decoder.items()} == old_added
    for token_id, content in old_added.items():
        assert variant.tokenizer.encode(content, add_special_tokens=False) == [token_id]
    assert variant.tokenizer.encode("Hello world") == base.encode("Hello world")   # BOS added as before


def test_protected_english_encodes_to_the_same_ids(case, shared):
    base, variant = case
    protected = english(shared)[:300]
    drift = reencoded_words(base, variant.tokenizer, len(base), protected)
    assert drift["docs"] == 300 and drift["changed_docs"] == 0 and drift["changed_words"] == 0
    # Held-out English (not used for protection): measured 0 (Llama-3) and 2e-5 (Mistral) of words re-encoded.
    held_out = reencoded_words(base, variant.tokenizer, len(base), english(shared)[300:450])
    assert held_out["words"] > 70_000
    assert held_out["changed_word_rate"] < 1e-3


def test_russian_needs_fewer_tokens_per_word(case, shared):
    base, variant = case
    ud = ud_sentences(shared)
    assert n_tokens(variant.tokenizer, ud) < 0.99 * n_tokens(base, ud)


def test_round_trip_on_mixed_text(case, shared):
    base, variant = case
    tok = variant.tokenizer
    text = MIXED + russian(shared)[0][:3000]
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert max(ids) >= len(base)   # new tokens are used


def test_every_token_is_reachable(case):
    _, variant = case
    data = backend_json(variant.tokenizer)
    assert reachable(data) == set(data["model"]["vocab"])


def test_cli_keeps_chat_template_and_writes_map(shared, tmp_path, run_cli):
    base = load_tokenizer(shared / BASES["mistral"])
    base.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    base.save_pretrained(tmp_path / "base")
    out = tmp_path / "ext"
    code, _, err = run_cli("tokenizer", "extend", "--base", tmp_path / "base", "--out", out,
                           "--data", shared / "ru_text/ruslit.jsonl.xz", "--max-chars", "100000",
                           "--new-vocab-size", "1000", "--add", "100")
    assert code == 0, err
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == base.chat_template
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    chat = tok.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False)
    assert chat == "[user] Привет</s>"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["added"] == 100 and len(tok) == 32100
    assert manifest["metrics"]["base_fingerprint"] != manifest["metrics"]["variant_fingerprint"]
    old_id = read_vocab_map(out)
    assert old_id[:32000] == list(range(32000)) and old_id[32000:] == [-1] * 100


def test_non_bpe_base_and_foreign_pipeline_are_refused(shared):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0)))
    with pytest.raises(LingraftError, match="Unigram model; vocabulary extension and optimisation need a BPE"):
        extend(unigram, new_tokenizer(shared, "mistral"))
    gpt2 = load_tokenizer(shared / "tokenizers/gpt2")
    with pytest.raises(LingraftError, match="pre_tokenizer differs from the base's"):
        extend(gpt2, new_tokenizer(shared, "llama3"))


# -- the merge rule on a toy vocabulary ---------------------------------------------------

TOY = {c: i for i, c in enumerate("abcdr")}


def test_plan_follows_rank_budget_and_protection():
    new_merges = [("a", "b"), ("r", "a"), ("ab", "ra"), ("c", "a"), ("abra", "ca")]
    plan = plan_extension(TOY, new_merges, budget=3)
    assert plan.tokens == ["ab", "ra", "abra"]
    assert plan.merges == [("a", "b"), ("r", "a"), ("ab", "ra")]
    # Building "abra" from a protected pair is refused, and so is everything built from it.
    plan = plan_extension(TOY, new_merges, budget=None, protected_pairs={("ab", "ra")})
    assert plan.tokens == ["ab", "ra", "ca"] and plan.rejected_by_protect == 2
    # A token with several spellings gets one merge per spelling; a frequency order pulls in parts.
    plan = plan_extension(TOY, [("a", "b"), ("b", "c"), ("ab", "c")], budget=None, order=["abc"])
    assert plan.tokens == ["ab", "abc"] and plan.merges == [("a", "b"), ("ab", "c")]
    plan = plan_extension({**TOY, "bc": 5}, [("a", "b"), ("ab", "c")], budget=None)
    assert plan.merges == [("a", "b"), ("a", "bc"), ("ab", "c")]


def test_shrink_keeps_closures_and_exact_size():
    tok_json = {"model": {"type": "BPE", "vocab": {**TOY, "ab": 5, "abr": 6, "ra": 7, "abra": 8},
                          "merges": [["a", "b"], ["ab", "r"], ["r", "a"], ["abr", "a"], ["ab", "ra"]]},
                "added_tokens": [{"id": 9, "content": "<s>"}]}
    assert plan_shrink(tok_json, size=8, order=["abra"]) == {*TOY, "ab", "abr", "abra", "<s>"}
    # "abra" needs 3 slots (itself, "abr", "ab"); with 7 the room left goes to the lowest-ranked merges.
    assert plan_shrink(tok_json, size=7, order=["abra"]) == {*TOY, "ab", "abr", "<s>"}
    with pytest.raises(LingraftError, match="5 atoms"):
        plan_shrink(tok_json, size=4, order=[])


# -- without protection: only text holding a new-language letter may change (issue 14.1-2) ------

@lru_cache(maxsize=None)
def extended_bare(shared: Path, name: str):
    """Extended with every token the rules accept, and no protected corpus."""
    base = load_tokenizer(shared / "tokenizers/gpt2") if name == "gpt2" else base_tokenizer(shared, name)
    if name == "gpt2":
        from lingraft.vocabulary.training import TrainParams, base_pipeline, train_tokenizer
        new = train_tokenizer(russian(shared), base_pipeline(base, []), TrainParams("bpe", 3000))
    else:
        new = new_tokenizer(shared, name)
    return base, extend(base, new)


@pytest.mark.parametrize("name", [*sorted(BASES), "gpt2"])
def test_unprotected_english_numbers_and_code_keep_their_ids(shared, name):
    from lingraft.vocabulary.drift_samples import number_lines, python_sources
    base, variant = extended_bare(shared, name)
    assert variant.counts["new_scripts"] == ["CYRILLIC"] and variant.counts["added"] > 300
    for texts in (python_sources(150), number_lines(20)):
        assert reencoded_words(base, variant.tokenizer, len(base), texts)["changed_docs"] == 0
    held_out = reencoded_words(base, variant.tokenizer, len(base), english(shared)[300:600])
    assert held_out["changed_docs"] <= 0.01 * held_out["docs"]
    ud = ud_sentences(shared)
    assert n_tokens(variant.tokenizer, ud) < 0.99 * n_tokens(base, ud)


def test_no_new_token_is_whitespace_digits_or_punctuation_only(shared):
    from lingraft.vocabulary.token_rules import token_scripts
    base, variant = extended_bare(shared, "gpt2")
    new_tokens = variant.tokenizer.convert_ids_to_tokens(list(range(len(base), len(variant.tokenizer))))
    assert all("CYRILLIC" in token_scripts(t, byte_level=True) for t in new_tokens)
    assert variant.counts["refused_by_rule"]["no_new_language_letter"] > 0
    code = "def f(x):\n    if x:\n        return 1\n"   # indentation runs such as ĊĠĠĠ stay the base's
    assert variant.tokenizer.encode(code) == base.encode(code)


def test_new_token_rule_on_token_spellings():
    from lingraft.vocabulary.token_rules import BaseRules, NewTokenRule
    byte_level = NewTokenRule(BaseRules(False, False, True, None), ["Cyrillic"])
    assert byte_level.refusal("ĊĠĠĠ") == byte_level.refusal("Ġ1895") == "no_new_language_letter"
    assert byte_level.refusal("ĠÐ¿") is None                  # " п"
    assert byte_level.refusal("ĠÐ") is None                   # " " + the lead byte of а..п: Cyrillic
    assert byte_level.refusal("ĠÃ") == "no_new_language_letter"   # lead byte of À..ÿ: Latin, not new
    spm = NewTokenRule(BaseRules(True, True, False, None), ["CYRILLIC"], base_tokens={"▁1"})
    assert spm.refusal("▁1-й") == "joins_a_digit" and spm.refusal("сл▁ово") == "whitespace_inside"
    assert spm.refusal("00") == "joins_a_digit" and spm.refusal("▁»,") == "no_new_language_letter"
    assert spm.refusal("▁1") is None and spm.refusal("▁▁слово") is None   # base tokens may come back


def test_unknown_new_script_is_refused(shared):
    with pytest.raises(LingraftError, match="new_scripts: no new token holds a letter of KLINGON"):
        extend(base_tokenizer(shared, "mistral"), new_tokenizer(shared, "mistral"), new_scripts=["Klingon"])

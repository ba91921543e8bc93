"""LEP Optimized vocabulary: exactly N base tokens + M new, consistent merges, a correct id map."""
from __future__ import annotations

import json

import pytest

from lingraft.errors import LingraftError
from lingraft.vocabulary.bpe_surgery import atoms, merge_list, reachable
from lingraft.vocabulary.vocab_map import read_vocab_map
from lingraft.vocabulary.loading import backend_json, load_tokenizer
from lingraft.vocabulary.optimize import by_usage, optimize, usage_counts
from tests.helpers import BASES, KEEP, MIXED, base_tokenizer, n_tokens, new_tokenizer, optimized, russian, \
    ud_sentences

ADD = {"llama3": 500, "mistral": 800}   # below what the 3000-token new BPEs offer beyond the kept base


@pytest.fixture(scope="module", params=sorted(BASES))
def case(request, shared):
    name = request.param
    return name, base_tokenizer(shared, name), optimized(shared, name, ADD[name])


def test_exactly_keep_base_tokens_plus_add_new(case):
    name, base, variant = case
    data, base_data = backend_json(variant.tokenizer), backend_json(base)
    n_special = len(base_data["added_tokens"])
    old_ids = variant.old_id_of_new_id
    first_new = KEEP[name] + n_special   # `keep` counts model tokens; special/added tokens come on top
    assert len(variant.tokenizer) == len(old_ids) == first_new + ADD[name]
    assert all(i >= 0 for i in old_ids[:first_new])
    assert variant.counts["re_added_base"] == sum(i >= 0 for i in old_ids[first_new:])
    assert sorted(data["model"]["vocab"].values()) == list(range(len(old_ids)))   # compact ids


def test_id_map_points_at_the_same_token(case):
    _, base, variant = case
    old_ids = variant.old_id_of_new_id
    kept = [i for i, old in enumerate(old_ids) if old >= 0]
    assert variant.tokenizer.convert_ids_to_tokens(kept) == base.convert_ids_to_tokens([old_ids[i] for i in kept])
    base_vocab = base.get_vocab()
    assert all(t not in base_vocab for t, old in zip(variant.tokenizer.convert_ids_to_tokens(
        list(range(len(old_ids)))), old_ids) if old < 0)
    n_old = len(old_ids) - variant.counts["added"]
    assert all(old_ids[i] < old_ids[i + 1] for i in range(n_old - 1))   # kept tokens keep their order


def test_merges_are_consistent_and_every_token_reachable(case):
    _, base, variant = case
    data, base_data = backend_json(variant.tokenizer), backend_json(base)
    vocab = data["model"]["vocab"]
    assert reachable(data) == set(vocab)
    base_merges = merge_list(base_data["model"])
    assert atoms(base_data["model"]["vocab"], base_merges) <= set(vocab)   # bytes, characters, control pieces
    # Base merges survive iff parts and result are kept, first and in their old order; then the new
    # tokens' merges, each producing a new token.
    first_new = len(variant.old_id_of_new_id) - variant.counts["added"]
    kept = {t for t, i in vocab.items() if i < first_new}
    expected = [m for m in base_merges if all(t in kept for t in (*m, m[0] + m[1]))]
    merges = merge_list(data["model"])
    assert merges[:len(expected)] == expected
    assert all(vocab[a + b] >= first_new for a, b in merges[len(expected):])


def test_most_used_tokens_are_kept(case, shared):
    _, base, variant = case
    (count,) = usage_counts([base], russian(shared))
    top = by_usage(base, count)[:500]
    assert set(top) <= set(variant.tokenizer.get_vocab())


def test_special_tokens_and_bos_survive_renumbering(case):
    _, base, variant = case
    tok = variant.tokenizer
    assert [t.content for t in tok.added_tokens_decoder.values()] == [t.content for t in base.added_tokens_decoder.values()]
    for new_id, token in tok.added_tokens_decoder.items():
        assert tok.encode(token.content, add_special_tokens=False) == [new_id]
        assert base.convert_tokens_to_ids(token.content) == variant.old_id_of_new_id[new_id]
    if base.bos_token is not None:
        assert tok.encode("Hi")[0] == tok.convert_tokens_to_ids(base.bos_token)


def test_round_trip_on_mixed_text(case, shared):
    _, _, variant = case
    tok = variant.tokenizer
    text = MIXED + russian(shared)[0][:3000]
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert max(ids) >= len(tok) - variant.counts["added"]   # new tokens are used


def test_new_tokens_shorten_russian(shared):
    """The new tokens earn their place: Russian takes fewer tokens than with the shrunk base alone."""
    shrunk, full = optimized(shared, "mistral", 0), optimized(shared, "mistral", ADD["mistral"])
    ud = ud_sentences(shared)
    assert n_tokens(full.tokenizer, ud) < 0.95 * n_tokens(shrunk.tokenizer, ud)


def test_cli_writes_tokenizer_map_and_manifest(shared, tmp_path, run_cli):
    new = tmp_path / "new"
    new_tokenizer(shared, "mistral").save_pretrained(new)
    out = tmp_path / "opt"
    code, _, err = run_cli("tokenizer", "optimize", "--base", shared / BASES["mistral"], "--new", new,
                           "--data", shared / "ru_text/ruslit.jsonl.xz", "--max-chars", "100000",
                           "--keep", "5000", "--add", "300", "--out", out)
    assert code == 0, err
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    old_ids = read_vocab_map(out)
    assert len(tok) == len(old_ids) == 5303   # 5000 base + <unk> <s> </s> + 300 new
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert (metrics["kept_base"], metrics["added"], metrics["vocab_size"]) == (5000, 300, 5303)
    assert metrics["corpus"]["chars"] == 100_000
    assert tok.convert_ids_to_tokens(list(range(3))) == ["<unk>", "<s>", "</s>"] and old_ids[:3] == [0, 1, 2]


def test_keep_below_the_atoms_is_refused(shared, run_cli, tmp_path):
    base = load_tokenizer(shared / BASES["mistral"])
    with pytest.raises(LingraftError, match=r"cannot keep 1000 base tokens: the base has 3551 atoms"):
        optimize(base, new_tokenizer(shared, "mistral"), russian(shared)[:1], 1000, 10)
    code, _, err = run_cli("tokenizer", "optimize", "--base", shared / BASES["mistral"], "--keep", "10",
                           "--add", "5", "--out", tmp_path / "x")
    assert code == 2 and "data: required key is missing" in err


LLAMA3_TEMPLATE = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                   "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_chat_template_tokens_survive_the_shrink(shared):
    """At keep=16000 the RusLit usage order alone drops Llama-3's `assistant` (issue 14.5)."""
    import copy
    base = copy.deepcopy(base_tokenizer(shared, "llama3"))
    base.chat_template = LLAMA3_TEMPLATE
    base.bos_token, base.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    variant = optimize(base, new_tokenizer(shared, "llama3"), russian(shared), 16_000, 300)
    for messages, prompt in (([{"role": "user", "content": "Привет"}], True),
                             ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}], False)):
        texts = [t.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
                 for t in (base, variant.tokenizer)]
        assert texts[0] == texts[1]
        # Template text (headers, roles, "\n\n") encodes to the same tokens; message words may differ.
        skeleton = texts[0].replace("Привет", "").replace("Be brief.", "").replace("Hi", "").replace("Hello", "")
        assert variant.tokenizer.tokenize(skeleton) == base.tokenize(skeleton)
    assert "assistant" in variant.tokenizer.get_vocab()
    assert variant.counts["kept_base"] == 16_000


def test_template_that_renders_nothing_is_an_error(shared):
    import copy
    base = copy.deepcopy(base_tokenizer(shared, "mistral"))
    base.chat_template = "{{ raise_exception('no conversations here') }}"
    with pytest.raises(LingraftError, match="base chat template: renders no conversation"):
        optimize(base, new_tokenizer(shared, "mistral"), russian(shared)[:5], KEEP["mistral"], 10)

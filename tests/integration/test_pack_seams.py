"""Cutting documents at paragraph starts for tokenization: which tokenizers allow it, where the
cuts go, and that the pieces' tokens are exactly the whole document's."""
from __future__ import annotations

import json
import lzma
from itertools import islice

import pytest

from lingraft.data_prep.pack_seams import cut_points, cuts_at_paragraphs, pieces, seam_facts
from lingraft.vocabulary.loading import backend_json, load_tokenizer
from tests.helpers import PACK_CORNER_CASES


@pytest.fixture(scope="module")
def llama3(shared):
    return load_tokenizer(shared / "tokenizers/llama3/tokenizer.json.xz")


def test_only_byte_level_tokenizers_with_a_known_pattern_are_cut(shared, llama3):
    data = backend_json(llama3)
    assert cuts_at_paragraphs(data)
    for spec in ("tokenizers/gpt2", "tokenizers/mistral/mistral7b_v0.1_tokenizer.model"):
        assert not cuts_at_paragraphs(backend_json(load_tokenizer(shared / spec))), spec
    changed = json.loads(json.dumps(data))
    changed["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] += "|\\n\\p{L}"
    assert not cuts_at_paragraphs(changed)
    changed = json.loads(json.dumps(data))
    changed["added_tokens"].append({"content": "\n\n", "lstrip": False})
    assert not cuts_at_paragraphs(changed)
    changed = json.loads(json.dumps(data))
    changed["normalizer"] = {"type": "NFC"}
    assert not cuts_at_paragraphs(changed)


def test_seam_facts_give_the_full_json_answer(shared, llama3):
    """The packer decides from the tokenizer's components, without serialising its vocabulary."""
    from tokenizers import AddedToken
    specs = ("tokenizers/gpt2", "tokenizers/mistral/mistral7b_v0.1_tokenizer.model",
             "tokenizers/ruadapt_darulm_32k_bpe")
    for tok in (llama3, *(load_tokenizer(shared / spec) for spec in specs)):
        backend = tok.backend_tokenizer
        assert cuts_at_paragraphs(seam_facts(backend)) == cuts_at_paragraphs(backend_json(tok))
    backend = llama3.backend_tokenizer.__class__.from_str(llama3.backend_tokenizer.to_str())
    backend.add_tokens([AddedToken("\n\n", special=False)])
    assert not cuts_at_paragraphs(seam_facts(backend))


def test_cuts_follow_a_line_break_and_precede_a_non_space():
    text = "aaaa\n\n  bbbb\ncccc\n\ndddd\n" + "e" * 20
    cuts = cut_points(text, 4)
    assert cuts and all(text[c - 1] == "\n" and not text[c].isspace() for c in cuts)
    assert "".join(pieces(text, cuts)) == text
    assert all(len(p) >= 4 for p in pieces(text, cuts)[:-1])
    assert cut_points("no line breaks " * 100, 10) == []
    assert cut_points("short\ntext", 100) == []


def test_pieces_tokenize_to_the_whole_documents_tokens(shared, llama3):
    with lzma.open(shared / "ru_text/ruslit.jsonl.xz", "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"][:40_000] for line in islice(fh, 3)]
    with open(shared / "en_text/fineweb_en_sample.jsonl", encoding="utf-8") as fh:
        texts += [json.loads(line)["text"] for line in islice(fh, 100)]
    texts += PACK_CORNER_CASES
    backend = llama3.backend_tokenizer
    n_cuts = 0
    for text in texts:
        cuts = cut_points(text, 50)
        n_cuts += len(cuts)
        joined = [i for enc in backend.encode_batch_fast(pieces(text, cuts), add_special_tokens=False)
                  for i in enc.ids]
        assert joined == backend.encode(text, add_special_tokens=False).ids
    assert n_cuts > 1000


def test_gpt2_would_change_tokens_at_such_a_cut(shared):
    """Why the rule names its tokenizers: GPT-2's pattern reads a blank line differently when
    the paragraph after it is missing, so it is never cut."""
    backend = load_tokenizer(shared / "tokenizers/gpt2").backend_tokenizer
    text = "One.\n\nTwo."
    whole = backend.encode(text).ids
    cut = [i for part in pieces(text, cut_points(text, 2)) for i in backend.encode(part).ids]
    assert cut_points(text, 2) == [6] and cut != whole

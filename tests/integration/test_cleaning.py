"""Cleaning filters, exact and near deduplication, and character-weighted mixing."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from lingraft.data_prep.clean_config import CleanConfig, NearDedupConfig
from lingraft.data_prep.cleaning import CodepointTable, ScriptFilter, codepoints, length_problem, normalize_text
from lingraft.data_prep.dedup import ExactDeduplicator, NearDeduplicator, ShingleHasher, minhash_signature
from lingraft.data_prep.mixing import CharMixer
from lingraft.data_prep.readers import iter_texts
from lingraft.data_prep.records import Document


def test_normalize_forms():
    decomposed = "е\u0308лка"  # е + combining diaeresis
    assert normalize_text(decomposed, "NFC") == "ёлка"
    assert normalize_text("ёлка", "NFD") == decomposed
    assert normalize_text("ﬁ ①", "NFKC") == "fi 1"
    assert normalize_text(decomposed, "none") is decomposed
    already = "уже нормализовано"
    assert normalize_text(already, "NFC") is already  # no copy when nothing changes


def test_codepoint_table_classifies_each_codepoint_once():
    calls = []
    table = CodepointTable(lambda ch: calls.append(ch) or ch.isdigit())
    mask = table.mask(codepoints("a1b22a1"))
    assert mask.tolist() == [False, True, False, True, True, False, True]
    assert sorted(calls) == ["1", "2", "a", "b"]
    table.mask(codepoints("2ab1"))
    assert len(calls) == 4 and table.classified == 4
    assert codepoints("\ud800x").tolist() == [0xD800, ord("x")]  # lone surrogates do not crash


def test_script_filter_shares():
    latin_cyrillic = ScriptFilter(["Cyrillic", "Latin", "N", "P"])
    assert latin_cyrillic.disallowed_share("Привет, world 2024!\n\t") == 0.0
    assert latin_cyrillic.disallowed_share("Ελληνικά") == 1.0
    assert latin_cyrillic.disallowed_share("абв 中文") == pytest.approx(2 / 6)
    assert latin_cyrillic.disallowed_share("") == 0.0
    # Stress accents are combining marks (script Inherited, category Mn): allow them explicitly.
    stressed = "замо\u0301к"
    assert latin_cyrillic.disallowed_share(stressed) == pytest.approx(1 / 6)
    assert ScriptFilter(["Cyrillic", "Inherited"]).disallowed_share(stressed) == 0.0
    with pytest.raises(ValueError):
        ScriptFilter([])


def test_length_problems():
    cfg = CleanConfig(min_chars=5, max_chars=20, min_words=3)
    assert length_problem("abcd", cfg) == "too_short"
    assert length_problem("x" * 21, cfg) == "too_long"
    assert length_problem("two words", cfg) == "too_few_words"
    assert length_problem("three small words", cfg) is None
    assert length_problem("y" * 10_000, CleanConfig()) is None


def test_exact_dedup_ignores_whitespace_only():
    dedup = ExactDeduplicator()
    assert not dedup.is_duplicate("Один  два\nтри")
    assert dedup.is_duplicate("  Один два   три\n")
    assert dedup.is_duplicate("Один\tдва\u00a0три")  # any Unicode whitespace
    assert not dedup.is_duplicate("Один два три.")
    assert not dedup.is_duplicate("один два три")  # case matters for exact duplicates


def test_shingles_are_case_insensitive_order_sensitive_and_keep_accented_words():
    words = ShingleHasher("word", 2)
    assert np.array_equal(words.shingles("Мама мыла раму"), words.shingles("мама, МЫЛА — раму!"))
    assert not np.array_equal(words.shingles("мама мыла раму"), words.shingles("раму мыла мама"))
    assert words.shingles("замо\u0301к стоит").size == 1  # the accent does not split the word
    assert words.shingles("один").size == 1               # shorter than a shingle: one shingle
    assert words.shingles("?!…").size == 2                 # no words: character shingles instead
    chars = ShingleHasher("char", 3)
    assert chars.shingles("abcd").size == 2
    assert np.array_equal(chars.shingles("ab  c"), chars.shingles("AB c"))


def test_signature_equals_datasketch_update_batch():
    from datasketch import MinHash

    hashes = np.random.default_rng(0).integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    reference = MinHash(num_perm=64, seed=3, hashfunc=int)
    reference.update_batch(hashes.tolist())
    a, b = reference.permutations
    assert np.array_equal(minhash_signature(hashes, a.astype(np.uint32), b.astype(np.uint32)), reference.hashvalues)


def test_signature_estimates_jaccard():
    dedup = NearDeduplicator(NearDedupConfig(num_perm=256))
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = [rng.choice(vocab) for _ in range(2000)]
    edited = list(base)
    for pos in rng.sample(range(len(base)), 60):
        edited[pos] = rng.choice(vocab)
    a, b = " ".join(base), " ".join(edited)
    sa, sb = dedup.hasher.shingles(a), dedup.hasher.shingles(b)
    true_j = len(set(sa.tolist()) & set(sb.tolist())) / len(set(sa.tolist()) | set(sb.tolist()))
    estimate = np.mean(dedup.signature(a) == dedup.signature(b))
    assert abs(estimate - true_j) < 0.08


def _edit_words(text: str, n: int, seed: int = 0) -> str:
    words = text.split()
    rng = random.Random(seed)
    for pos in rng.sample(range(len(words)), n):
        words[pos] = words[pos][::-1] + "x"
    return " ".join(words)


def test_near_dedup_catches_edited_copies_but_not_distinct_real_documents(shared):
    fineweb = list(iter_texts(str(shared / "en_text" / "fineweb_en_sample.jsonl")))
    dedup = NearDeduplicator(NearDedupConfig())
    kept = [i for i, text in enumerate(fineweb) if dedup.check(text, f"fineweb:{i}") is None]
    assert len(kept) == len(fineweb), "distinct web documents must not be near duplicates"

    long_docs = [t for t in fineweb if 400 <= len(t.split()) <= 3000][:20]
    assert len(long_docs) == 20
    for j, text in enumerate(long_docs):
        copy = _edit_words(text, 3, seed=j)
        assert copy != text
        match = dedup.check(copy, f"copy{j}")
        assert match is not None and match[0] == f"fineweb:{fineweb.index(text)}" and match[1] >= 0.8
    # Heavily rewritten copies are different documents.
    rewritten = _edit_words(long_docs[0], len(long_docs[0].split()) // 3, seed=99)
    assert dedup.check(rewritten, "rewritten") is None


def test_near_dedup_on_russian_sentences_finds_only_true_near_copies(shared):
    sentences = list(iter_texts(str(shared / "ru_text" / "ud_russian_sentences.jsonl")))
    exact, near = ExactDeduplicator(), NearDeduplicator(NearDedupConfig())
    hits = []
    for i, text in enumerate(sentences):
        if not exact.is_duplicate(text):
            match = near.check(text, str(i))
            if match is not None:
                hits.append((text, sentences[int(match[0])]))
    # Word shingles ignore case, punctuation and emoji: these differ only in those.
    assert 0 < len(hits) < 20
    lower_words = ShingleHasher("word", 1)
    for text, original in hits:
        assert set(lower_words.shingles(text).tolist()) == set(lower_words.shingles(original).tolist())


# --- mixing ------------------------------------------------------------------------------------

def _docs(name: str, sizes) -> list[Document]:
    return [Document(text="x" * n, source=name, where=f"{name}:{i}") for i, n in enumerate(sizes)]


def test_mix_holds_the_weights_at_every_prefix():
    rng = random.Random(1)
    ru = _docs("ru", [rng.randint(50, 500) for _ in range(2000)])
    en = _docs("en", [rng.randint(50, 500) for _ in range(150)])
    mixer = CharMixer([("ru", 0.9, iter(ru)), ("en", 0.1, iter(en))])
    chars = {"ru": 0, "en": 0}
    for doc in mixer:
        chars[doc.source] += len(doc.text)
        total = chars["ru"] + chars["en"]
        assert abs(chars["en"] - 0.1 * total) <= 500  # within one document of the target
    assert mixer.stop_reason == "source 'en' ran out (on_exhausted=stop)"
    mix = mixer.realised_mix()
    assert mix["en"]["docs"] == 150 and mix["ru"]["docs"] < 2000
    assert mix["en"]["share"] == pytest.approx(0.1, abs=0.002)
    assert mix["ru"]["share"] + mix["en"]["share"] == pytest.approx(1.0)
    assert [t.exhausted for t in mixer.tallies] == [False, True]


def test_mix_is_deterministic_with_ties_to_the_first_source():
    def order(**kw):
        streams = [("a", 1.0, iter(_docs("a", [10] * 3))), ("b", 1.0, iter(_docs("b", [10] * 3)))]
        return [d.where for d in CharMixer(streams, **kw)]

    assert order() == ["a:0", "b:0", "a:1", "b:1", "a:2", "b:2"]
    assert order() == order()


def test_mix_continue_drains_everything_and_max_chars_caps():
    def streams():
        return [("big", 3.0, iter(_docs("big", [100] * 10))), ("small", 1.0, iter(_docs("small", [100] * 2)))]

    stop = list(CharMixer(streams(), "stop"))
    assert sum(d.source == "small" for d in stop) == 2 and len(stop) < 12
    mixer = CharMixer(streams(), "continue")
    drained = list(mixer)
    assert len(drained) == 12 and mixer.stop_reason == "every source ran out"
    capped = CharMixer(streams(), "continue", max_chars=450)
    assert sum(len(d.text) for d in capped) == 500 and capped.stop_reason == "reached max_chars=450"


def test_mix_pulls_lazily():
    pulled = []

    def stream(name):
        for doc in _docs(name, [10] * 100):
            pulled.append(name)
            yield doc

    mixer = CharMixer([("a", 1.0, stream("a")), ("b", 1.0, stream("b"))])
    assert len(list(itertools.islice(mixer, 4))) == 4
    assert len(pulled) == 4
    mixer.close()

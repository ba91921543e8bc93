"""`lingraft eval copy`: the metrics on hand-made outputs, and one run on a tiny chat model."""
from __future__ import annotations

import pytest

from lingraft.evaluation.copy_task import char_match, copy_metrics, length_ratio, paragraphs_of
from lingraft.evaluation.results import read_results
from tests.helpers import chat_tokenizer, tiny_chat_model


def words(text: str) -> int:
    return len(text.split())


def test_sentence_length_ratio_on_hand_made_outputs():
    sources = ["one two three four", "a b", "x y z"]
    predictions = ["one two three four", "a b c d", ""]          # exact, twice as long, empty
    metrics = copy_metrics("sentence", sources, predictions, words)
    assert metrics["length_ratio"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert "match_share" not in metrics
    assert length_ratio(3, 4) == length_ratio(4, 3) == 0.75 and length_ratio(0, 0) == 1.0


def test_paragraph_match_share_on_hand_made_outputs():
    source = "Ночь, улица, фонарь, аптека, бессмысленный и тусклый свет. " * 4     # 236 chars
    one_typo = source.replace("улица", "улнца", 1)                               # 1 char of 236 changed
    truncated = source[: len(source) // 2]
    metrics = copy_metrics("paragraph", [source] * 3, [f"  {source}\n", one_typo, truncated], words)
    assert char_match(one_typo, source) == pytest.approx(1 - 1 / len(source.strip()))
    assert char_match(one_typo, source) >= 0.99 > char_match(truncated, source)
    assert metrics["match_share"] == pytest.approx(2 / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)                        # surrounding spaces ignored


def test_paragraphs_are_lines_of_the_right_size():
    docs = iter(["short\n" + "x" * 50 + "\n\n" + "y  " * 30, "z" * 500])
    assert list(paragraphs_of(docs, 40, 100)) == ["x" * 50, " ".join(["y"] * 30)]


def test_copy_cli_on_tiny_chat_model(shared, tmp_path, run_cli):
    model = tiny_chat_model(tmp_path / "tiny", chat_tokenizer(shared))
    out = tmp_path / "copy"
    code, stdout, err = run_cli("eval", "copy", "--model", model, "--out", out, "--max-items", 3,
                                "--sentences", f"ru={shared / 'ru_text' / 'ud_russian_sentences.jsonl'}",
                                "--sentences", f"en={shared / 'parallel' / 'pud_en_ru.jsonl'}@en",
                                "--paragraphs", shared / "en_text" / "fineweb_en_sample.jsonl",
                                "--max-new-tokens", 12, "--batch-size", 2)
    assert code == 0, err
    records = {r.label: r for r in read_results(out)}          # one record per set
    assert list(records) == ["ru", "en", "fineweb_en_sample"]
    assert records["en"].meta["kind"] == "sentence" and records["fineweb_en_sample"].metrics["n"] == 3
    # A random model cannot copy: ratios are in range, and no paragraph is matched.
    assert 0 <= records["ru"].metrics["length_ratio"] <= 1 and records["fineweb_en_sample"].metrics["match_share"] == 0
    assert len(records["ru"].meta["examples"]) == 3
    code, _, err = run_cli("eval", "copy", "--model", model, "--out", out, "--sentences",
                           f"{shared / 'parallel' / 'pud_en_ru.jsonl'}@english")
    assert code == 1 and "no sentences found in field 'english'" in err

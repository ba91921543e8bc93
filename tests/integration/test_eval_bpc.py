"""`lingraft eval bpc`: the sliding-window scorer against direct per-token computation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lingraft.evaluation.bpc import bits_per_character, document_windows
from lingraft.evaluation.results import read_result

TEXTS = ["Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный — пора, красавица, проснись.",
         "", "A short one.", "Tokens per word differ between languages, characters do not."]


@pytest.fixture(scope="module")
def model(tiny_chat):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(tiny_chat), dtype=torch.float32).eval()


def _begins(n_tokens: int, max_length: int, stride: int | None) -> list[int]:
    """The definition, stated independently: token p (1-based, after the start token) belongs to
    window (p-1)//step, whose input starts at max(0, first + step - 1 - max_length)."""
    step = stride or max_length
    return [max(0, ((p - 1) // step) * step + step - max_length) for p in range(1, n_tokens + 1)]


@torch.no_grad()
def _reference_nll(model, ids: list[int], start: int, begins: list[int]) -> float:
    """-sum ln p(token p | full[begins[p]:p]) in nats: one unpadded forward pass per distinct
    context start, scoring only the tokens that start there."""
    full = [start, *ids]
    nll = 0.0
    for begin in sorted(set(begins)):
        positions = [p for p in range(1, len(full)) if begins[p - 1] == begin]
        inputs = torch.tensor([full[begin:positions[-1] + 1]])
        logp = torch.log_softmax(model(inputs).logits[0].double(), dim=-1)
        nll -= sum(logp[p - 1 - begin, full[p]].item() for p in positions)
    return nll


@pytest.mark.parametrize("max_length,stride", [(1000, None), (6, None), (6, 2), (6, 4)])
def test_matches_per_token_reference(model, chat_tok, max_length, stride):
    ids = [chat_tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS if t]
    expected = 0.0
    for doc in ids:
        begins = _begins(len(doc), max_length, stride)
        contexts = [p - b for p, b in enumerate(begins, 1)]
        assert all(1 <= c <= max_length for c in contexts)
        if stride is not None:   # overlap guarantees every token at least max_length - stride + 1 context
            assert all(c >= min(p, max_length - stride + 1) for p, c in enumerate(contexts, 1))
        expected += _reference_nll(model, doc, chat_tok.bos_token_id, begins)
    result = bits_per_character(model, chat_tok, TEXTS, max_length=max_length, stride=stride, batch_tokens=50)
    chars = sum(map(len, TEXTS))
    assert (result.characters, result.documents, result.tokens) == (chars, 3, sum(map(len, ids)))
    assert result.utf8_bytes == sum(len(t.encode()) for t in TEXTS)
    assert result.bits_per_character == pytest.approx(expected / math.log(2) / chars, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(expected / math.log(2) / result.utf8_bytes, rel=1e-5)


def test_stride_one_gives_every_token_full_context():
    windows = document_windows(list(range(10, 30)), start=1, max_length=5, stride=1)
    assert len(windows) == 20 and all(w.scored == 1 for w in windows)
    assert [len(w.tokens) for w in windows] == [2, 3, 4, 5, 6] + [6] * 15
    with pytest.raises(Exception, match="stride must be"):
        document_windows([1, 2], start=0, max_length=5, stride=6)


def test_cli_writes_one_record(tiny_chat, tmp_path, run_cli, shared):
    out = tmp_path / "bpc"
    code, stdout, err = run_cli("eval", "bpc", "--model", f"tiny={tiny_chat}", "--out", out, "--data",
                                shared / "ru_text" / "ud_russian_sentences.jsonl", "--max-docs", 4,
                                "--max-length", 16, "--stride", 8)
    assert code == 0, err
    result = read_result(out)
    assert (result.task, result.model, result.label) == ("bpc", "tiny", "ud_russian_sentences")
    assert {"bits_per_char", "bits_per_byte", "n_chars", "n_tokens"} <= set(result.metrics)
    assert result.metrics["bits_per_char"] > result.metrics["bits_per_byte"] > 0    # Cyrillic: 2 bytes per letter
    assert f"{result.metrics['bits_per_char']:.4f}" in stdout and "| bpc/ud_russian_sentences/bits_per_char ↓ |" in stdout
    assert result.meta["params"]["stride"] == 8 and result.meta["inputs"]["data"]["sha256"]
    assert (out / "report.md").read_text().startswith("| metric | tiny |")
    line = json.loads((out / "results.jsonl").read_text())
    assert list(line) == ["task", "model", "label", "data", "metrics", "meta"]


def test_cli_bad_input(tiny_chat, tmp_path, run_cli, shared):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli("eval", "bpc", "--model", tiny_chat, "--out", tmp_path / "o", "--data", empty)
    assert code == 1 and "no text to evaluate" in err
    code, _, err = run_cli("eval", "bpc", "--model", tiny_chat, "--out", tmp_path / "o", "--data",
                           shared / "en_text" / "fineweb_en_sample.jsonl", "--text-field", "body")
    assert code == 1 and "no record has the field 'body'" in err and "id, text" in err
    code, _, err = run_cli("eval", "bpc", "--model", tiny_chat, "--out", tmp_path / "o", "--data", "x.jsonl",
                           "--stride", 2000)
    assert code == 2 and "stride" in err
    code, _, err = run_cli("eval", "bpc", "--model", tiny_chat, "--out", tmp_path / "o")
    assert code == 2 and "data: required key is missing" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "old.json").write_text("{}")
    code, _, err = run_cli("eval", "bpc", "--model", tiny_chat, "--out", tmp_path / "old.json", "--data",
                           shared / "en_text" / "fineweb_en_sample.jsonl", "--max-docs", 1)
    assert code == 1 and "an eval output is a folder" in err


def test_smollm2_matches_direct_computation(smollm2, shared):
    """Real weights on a Russian sentence, with and without a sliding window."""
    from transformers import AutoModelForCausalLM

    from lingraft.vocabulary.loading import load_tokenizer
    with open(shared / "ru_text" / "ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        text = json.loads(fh.readline())["text"]
    tok = load_tokenizer(smollm2)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for max_length, stride in ((1024, None), (24, 8)):
        result = bits_per_character(model, tok, [text], max_length=max_length, stride=stride, batch_tokens=64)
        nll = _reference_nll(model, ids, tok.bos_token_id, _begins(len(ids), max_length, stride))
        assert result.tokens == len(ids) > 24
        assert result.bits_per_character == pytest.approx(nll / math.log(2) / len(text), rel=1e-4)
    # Measured on the first UD sentences: about 3.2 bits per character for SmolLM2 on Russian.
    assert 2.0 < result.bits_per_character < 5.0

"""`lingraft eval mc`: validation, the shared-set adapters, scoring against direct computation."""
from __future__ import annotations

import json

import pytest
import torch

from lingraft.data_prep.records import DropLog
from lingraft.evaluation.mc import McItem, accuracy, load_items, prompts_with_shots, score_items, validate
from lingraft.errors import DataError, LingraftError
from lingraft.evaluation.results import read_results


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_bad_items_are_skipped_and_counted_or_errors_in_strict_mode(tmp_path):
    path = _write(tmp_path / "items.jsonl", [
        {"context": "2+2=", "choices": [" 4", " 5"], "label": 0},
        {"context": "one", "choices": [" only"], "label": 0},
        {"context": "out", "choices": [" a", " b"], "label": 2},
        {"context": "neg", "choices": [" a", " b"], "label": -1},
    ])
    drops = DropLog()
    items = load_items("generic", str(path), None, drops)
    assert len(items) == 1 and dict(drops.counts) == {"single_choice": 1, "label_out_of_range": 2}
    with pytest.raises(DataError, match=r"items.jsonl:2: single_choice"):
        load_items("generic", str(path), None, DropLog(strict=True))
    with pytest.raises(LingraftError, match="missing field 'choices'"):
        validate({"context": "x", "answers": [], "label": 0}, "f:1", DropLog())
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LingraftError, match="no multiple-choice item to score"):
        load_items("generic", str(tmp_path / "empty.jsonl"), None, DropLog())


def test_adapters_read_the_shared_sets(shared):
    counts = {}
    for fmt, rel in (("parus", "rsg_humanbench/parus.jsonl"), ("rcb", "mera_humanbench/rcb.jsonl"),
                     ("rwsd", "mera_humanbench/rwsd.jsonl"), ("russe", "rsg_humanbench/russe.jsonl"),
                     ("rucola", "rucola/in_domain_dev.csv")):
        drops = DropLog()
        items = load_items(fmt, str(shared / "eval" / rel), None, drops)
        counts[fmt] = (len(items), len({i.group for i in items}), drops.total)
    assert counts["parus"] == (1000, 500, 0)             # each question in both option orders
    assert counts["rwsd"] == (276, 276, 0) and counts["russe"] == (1140, 1140, 0)
    assert counts["rucola"] == (983, 983, 0) and counts["rcb"][0] + counts["rcb"][2] == 468
    first, swapped = load_items("parus", str(shared / "eval" / "rsg_humanbench" / "parus.jsonl"), 1, DropLog())
    assert first.choices == swapped.choices[::-1] and first.label == 1 - swapped.label
    assert first.choices[first.label] == " Он боялся сцены."
    with pytest.raises(LingraftError, match="missing field 'premise'.*wrong --task format"):
        load_items("parus", str(shared / "eval" / "mera_humanbench" / "rwsd.jsonl"), 1, DropLog())


def test_grouped_questions_need_every_order_right():
    items = [McItem("c", ("a", "bbbb"), 0, "q1", "w"), McItem("c", ("bbbb", "a"), 1, "q1", "w"),
             McItem("d", ("a", "b"), 1, "q2", "w")]
    # q1: right in the first order only (raw); per character the long choice wins both times.
    result = accuracy(items, [[-1.0, -2.0], [-1.0, -2.0], [-3.0, -1.0]])
    assert result["acc"] == 0.5 and result["n_questions"] == 2 and result["chance"] == pytest.approx((0.25 + 0.5) / 2)
    assert result["acc_norm"] == 0.5      # q1 norm: [-1, -0.5] -> "bbbb" (wrong then right); q2 right


def test_fewshot_is_deterministic_and_excludes_the_item():
    items = [McItem(f"q{i}?", (" yes", " no"), i % 2, f"g{i}", "w") for i in range(6)]
    prompts = prompts_with_shots(items, 2, "\n\n", seed=0)
    assert prompts == prompts_with_shots(items, 2, "\n\n", seed=0) != prompts_with_shots(items, 2, "\n\n", seed=1)
    for item, prompt in zip(items, prompts):
        shots = prompt.split("\n\n")
        assert len(shots) == 3 and shots[-1] == item.context and item.context not in shots[:2]


def test_scores_match_direct_computation(tiny_chat, chat_tok):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat), dtype=torch.float32).eval()
    items = [McItem("The capital of France is", (" Paris", " a large green cat"), 0, "a", "w"),
             McItem("Столица России —", (" Москва", " Тверь"), 0, "b", "w")]
    scores = score_items(model, chat_tok, items, [i.context for i in items], max_length=64, batch_tokens=32, desc="t")
    for item, item_scores in zip(items, scores):
        ctx = chat_tok(item.context, add_special_tokens=False)["input_ids"]
        for choice, score in zip(item.choices, item_scores):
            whole = [chat_tok.bos_token_id, *chat_tok(item.context + choice, add_special_tokens=False)["input_ids"]]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1].double(), dim=-1)
            expected = sum(logp[p - 1, whole[p]].item() for p in range(1 + len(ctx), len(whole)))
            assert score == pytest.approx(expected, rel=1e-5)


def test_mc_cli(tiny_chat, shared, tmp_path, run_cli):
    generic = _write(tmp_path / "toy.jsonl", [
        {"context": f"{a}+{a}=", "choices": [f" {2 * a}", f" {2 * a + 1}", " many"], "label": 0} for a in range(6)]
        + [{"context": "bad", "choices": [" x"], "label": 0}])
    out = tmp_path / "mc"
    code, stdout, err = run_cli("eval", "mc", "--model", tiny_chat, "--out", out, "--num-fewshot", 1, "--limit", 4,
                                "--task", f"generic={generic}",
                                "--task", f"parus={shared / 'eval' / 'rsg_humanbench' / 'parus.jsonl'}")
    assert code == 0, err
    records = {r.label: r for r in read_results(out)}          # one record per task
    assert list(records) == ["toy", "parus"] and records["parus"].metrics["num_fewshot"] == 1
    assert records["parus"].metrics["n_items"] == 8 and records["parus"].metrics["n_questions"] == 4
    assert records["toy"].metrics["skipped"] == 0 and records["toy"].meta["skipped_reasons"] == {}
    assert f"parus: acc {records['parus'].metrics['acc']:.4f}" in stdout
    code, _, err = run_cli("eval", "mc", "--model", tiny_chat, "--out", out, "--task", f"generic={generic}", "--strict")
    assert code == 1 and "toy.jsonl:7: single_choice" in err
    code, _, err = run_cli("eval", "mc", "--model", tiny_chat, "--out", out, "--task", f"copa={generic}")
    assert code == 2 and "task[0].format: expected one of" in err and "'copa'" in err

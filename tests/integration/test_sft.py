"""Chat rendering with an assistant-only loss mask, and `lingraft prep sft` on the real Russian chats."""
from __future__ import annotations

import gzip
import json
import lzma
from itertools import islice

import pytest
import torch

from lingraft.data_prep.chat import alpaca_messages, encode_chat, render_chat
from lingraft.errors import DataError, LingraftError

ARENA = "instruct/ru_arena_hard_qwen3_235b_answers.jsonl.xz"
SEED_TASKS = "instruct/rulm_ru_alpaca_seed_tasks.jsonl"
# The Llama-3 template (its date preamble left out): another family of control tokens than ChatML.
LLAMA3_TEMPLATE = ("{{ '<|begin_of_text|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
                   "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                   "{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def _target_runs(ids, mask) -> list[list[int]]:
    runs, current = [], []
    for token, target in zip(ids, mask):
        if target:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def _arena(shared, n: int) -> list[list[dict]]:
    with lzma.open(shared / ARENA, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["messages"] for line in islice(fh, n)]


def _seed_chats(shared) -> list[list[dict]]:
    chats = []
    for line in (shared / SEED_TASKS).read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        chats += [alpaca_messages(task["instruction"], inst["input"], inst["output"]) for inst in task["instances"]]
    return chats


@pytest.fixture(scope="module")
def smol_tok(smollm2):
    from lingraft.vocabulary.loading import load_tokenizer
    return load_tokenizer(str(smollm2))


@pytest.fixture(scope="module")
def llama3_tok(shared):
    from lingraft.vocabulary.loading import load_tokenizer
    return load_tokenizer(shared / "tokenizers" / "llama3" / "tokenizer.json.xz")


def test_decoded_targets_are_exactly_the_assistant_turns(shared, smol_tok, llama3_tok):
    seed = _seed_chats(shared)
    multi_turn = [{"role": "system", "content": "Отвечай кратко."}, *seed[0], *seed[1], *seed[2]]
    chats = _arena(shared, 4) + seed[3:6] + [multi_turn]
    for tok, template, end_of_turn in ((smol_tok, None, "<|im_end|>"), (llama3_tok, LLAMA3_TEMPLATE, "<|eot_id|>")):
        for chat in chats:
            ids, mask = render_chat(tok, chat, template)
            answers = [m["content"].strip() + end_of_turn for m in chat if m["role"] == "assistant"]
            assert [tok.decode(run) for run in _target_runs(ids, mask)] == answers
            prompt = tok.decode([t for t, m in zip(ids, mask) if not m])
            assert chat[0]["content"].strip() in prompt and "assistant" in prompt   # headers are context


def test_truncation_rule(smol_tok, shared):
    long_prompt = [{"role": "user", "content": "слово " * 400}, {"role": "assistant", "content": "Короткий ответ."}]
    cut = encode_chat(smol_tok, long_prompt, max_tokens=64)
    text = smol_tok.decode(cut.ids)
    assert cut.truncated == ["prompt"] and len(cut.ids) == 64
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\nКороткий ответ.<|im_end|>\n")

    chat = _arena(shared, 1)[0]
    full = encode_chat(smol_tok, chat)
    answer = encode_chat(smol_tok, chat, max_tokens=len(full.ids) - 10)
    assert answer.truncated == ["answer"] and answer.ids == full.ids[:len(full.ids) - 10]

    two = chat + [{"role": "user", "content": "Спасибо!"}, {"role": "assistant", "content": "Пожалуйста."}]
    turns = encode_chat(smol_tok, two, max_tokens=len(full.ids) + 5)
    assert turns.truncated == ["turns"] and turns.ids == full.ids                   # whole exchanges only


def _write_chats(path, chats: list, bad_lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for chat in chats:
            fh.write(json.dumps({"messages": chat}, ensure_ascii=False) + "\n")
        fh.writelines(line + "\n" for line in bad_lines)


BAD = ['{"messages": [{"role": "assistant", "content": "сначала ответ"}, {"role": "user", "content": "потом вопрос"}]}',
       '{"messages": [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "да"}]}',
       '{"messages": [{"role": "user", "content": "вопрос без ответа"}]}',
       '{"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "да"}]}',
       '{"text": "not a chat"}',                    # skipped: plain documents need --text-field
       '{"messages": [{"role": "user", "content": "broken json"',
       '{"messages": [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "да"}]}']


def test_prep_sft_packs_whole_chats_masks_prompts_and_counts_skips(tmp_path, shared, smollm2, smol_tok, run_cli):
    from lingraft.data_prep.dataset import IGNORE_INDEX, PackedDataset
    chats = _arena(shared, 24) + _seed_chats(shared)[:40]
    _write_chats(tmp_path / "chats.jsonl.gz", chats, BAD)
    seq_len = 512
    code, _, err = run_cli("prep", "sft", "--in", tmp_path / "chats.jsonl.gz", "--tokenizer", smollm2,
                           "--out", tmp_path / "sft", "--seq-len", seq_len)
    assert code == 0, err
    metrics = json.loads((tmp_path / "sft" / "manifest.json").read_text())["metrics"]
    assert metrics["chats_kept"] == len(chats) and metrics["chats_read"] == len(chats) + len(BAD)
    assert {r: v["count"] for r, v in metrics["skipped"].items()} == {
        "bad_order": 2, "bad_role": 1, "empty_content": 1, "missing_field": 1, "invalid_json": 1,
        "special_token_in_content": 1}
    assert metrics["truncated"]["answer"] > 0          # the arena answers are long; every one is counted

    data = PackedDataset(tmp_path / "sft", shuffle=False)
    assert data.num_samples == metrics["samples"]
    whole = {c[1]["content"].strip() + "<|im_end|>" for c in chats
             if len(encode_chat(smol_tok, c).ids) <= seq_len}
    answers = [c[1]["content"].strip() + "<|im_end|>" for c in chats]
    seen = []
    im_start, pad = smol_tok.convert_tokens_to_ids("<|im_start|>"), smol_tok.pad_token_id
    for sample in data:
        labels = sample["labels"]
        runs = _target_runs(labels.tolist(), (labels != IGNORE_INDEX).tolist())
        seen += [smol_tok.decode(run) for run in runs]
        starts = torch.nonzero(sample["position_ids"] == 0).flatten().tolist()
        assert starts[0] == 0 and sample["input_ids"][0] == im_start    # every sample begins with a whole chat
        assert all(sample["input_ids"][s] in (im_start, pad) for s in starts)   # then chats, then a filler
    assert all(any(answer.startswith(text) for answer in answers) for text in seen)
    assert sorted(t for t in seen if t in whole) == sorted(whole)   # each whole chat once, none split or repeated


def test_plain_text_records_are_documents_after_the_start_token(tmp_path, shared, smollm2, smol_tok, run_cli):
    """Replay text beside the chats (`--text-field text`): read on its own after the start token that
    `eval bpc` scores documents after, every token of it a target."""
    from lingraft.data_prep.dataset import IGNORE_INDEX, PackedDataset
    texts = ["Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный.", "The cat sat on the mat. " * 40]
    bad = ['{"text": "  "}', '{"text": 7}', '{"text": "a <|im_end|> b"}']
    _write_chats(tmp_path / "mixed.jsonl.gz", _arena(shared, 2),
                 [json.dumps({"text": t}, ensure_ascii=False) for t in texts] + bad)
    code, _, err = run_cli("prep", "sft", "--in", tmp_path / "mixed.jsonl.gz", "--tokenizer", smollm2,
                           "--out", tmp_path / "sft", "--seq-len", 128, "--text-field", "text")
    assert code == 0, err
    metrics = json.loads((tmp_path / "sft" / "manifest.json").read_text())["metrics"]
    assert metrics["chats_kept"] == 4 and metrics["documents_kept"] == 2 and metrics["truncated"]["document"] == 1
    assert {r: v["count"] for r, v in metrics["skipped"].items()} == {
        "empty_text": 1, "bad_text": 1, "special_token_in_content": 1}
    short = smol_tok(texts[0], add_special_tokens=False)["input_ids"]
    start_id = smol_tok.bos_token_id if smol_tok.bos_token_id is not None else smol_tok.eos_token_id
    found = 0
    for sample in PackedDataset(tmp_path / "sft", shuffle=False):
        ids, labels, positions = (sample[k].tolist() for k in ("input_ids", "labels", "position_ids"))
        for start in (i for i, p in enumerate(positions) if p == 0 and ids[i + 1:i + 1 + len(short)] == short):
            found += 1   # the label at i predicts token i + 1: the start token predicts the text's first
            assert ids[start] == start_id and labels[start:start + len(short)] == short
            assert start == 0 or labels[start - 1] == IGNORE_INDEX   # the start token is nobody's target
    assert found == 1


def test_strict_mode_and_missing_template_are_errors(tmp_path, shared, smollm2, llama3_tok, run_cli):
    from lingraft.data_prep.sft_config import SftPackConfig
    from lingraft.data_prep.sft_pack import run_sft_pack
    _write_chats(tmp_path / "bad.jsonl.gz", _arena(shared, 2), BAD[:1])
    strict = SftPackConfig(input=[str(tmp_path / "bad.jsonl.gz")], tokenizer=str(smollm2), out=str(tmp_path / "o"),
                           seq_len=256, strict=True)
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:3: bad_order"):
        run_sft_pack(strict)

    llama3 = shared / "tokenizers" / "llama3" / "tokenizer.json.xz"
    code, _, err = run_cli("prep", "sft", "--in", tmp_path / "bad.jsonl.gz", "--tokenizer", llama3,
                           "--out", tmp_path / "o", "--seq-len", 256)
    assert code == 1 and "has no chat template" in err and "chat_template" in err
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3_TEMPLATE, encoding="utf-8")
    code, _, err = run_cli("prep", "sft", "--in", tmp_path / "bad.jsonl.gz", "--tokenizer", llama3,
                           "--out", tmp_path / "o", "--seq-len", 256, "--chat-template", template)
    assert code == 0, err
    with pytest.raises(LingraftError, match="has no chat template"):
        render_chat(llama3_tok, _arena(shared, 1)[0])


def test_prep_alpaca_turns_seed_tasks_into_chats_in_either_language(tmp_path, shared, run_cli):
    seed = shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"
    code, _, err = run_cli("prep", "alpaca", "--input", seed, "--out", tmp_path / "ru")
    assert code == 0, err
    tasks = [json.loads(line) for line in seed.read_text(encoding="utf-8").splitlines() if line.strip()]
    chats = [json.loads(line)["messages"] for line in (tmp_path / "ru" / "chats.jsonl").read_text().splitlines()]
    assert len(chats) == sum(len(t["instances"]) for t in tasks)
    first = tasks[0]["instances"][0]
    assert chats[0][0]["role"] == "user" and chats[0][0]["content"].startswith(tasks[0]["instruction"])
    assert chats[0][1] == {"role": "assistant", "content": first["output"]}
    code, _, err = run_cli("prep", "alpaca", "--input", seed, "--out", tmp_path / "en",
                           "--instruction-field", "orig_instruction", "--instances-field", "orig_instances")
    assert code == 0, err
    manifest = json.loads((tmp_path / "en" / "manifest.json").read_text())
    with_originals = [t for t in tasks if t.get("orig_instruction") and t.get("orig_instances")]
    assert manifest["metrics"]["tasks"] == len(with_originals) < len(tasks)      # Russian-only tasks are skipped
    assert sum(r["count"] for r in manifest["metrics"]["skipped"].values()) == len(tasks) - len(with_originals)

"""`lingraft calibrate`: filters, judge, copy tasks, prompt fitting, resumable generation, the stage."""
from __future__ import annotations

import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lingraft.data_prep.records import DropLog
from lingraft.config import ConfigError, build_config
from lingraft.errors import LingraftError
from lingraft.propagate.calibrate.config import (
    CalibrateConfig,
    CopyConfig,
    JudgeConfig,
    LoopFilter,
    PromptSourceConfig,
    ScriptFilter,
)
from lingraft.propagate.calibrate.copy import copy_examples, sample_passages
from lingraft.propagate.calibrate.filters import ScriptMatcher, check_answer, filter_answers, repeated_ngram_share
from lingraft.propagate.calibrate.prompts import fit_prompt, load_prompts
from tests.conftest import REPO

CYRILLIC = ScriptMatcher.build(["CYRILLIC"], [])
RU_ANSWER = "Москва является столицей России и крупнейшим городом страны по численности населения."
LOOP = "Я думаю, что это хорошая идея. " * 20


def check(answer: str, stopped: bool = True, matcher: ScriptMatcher = CYRILLIC, **script) -> str | None:
    return check_answer(answer, stopped, ScriptFilter(**script), matcher, LoopFilter())


# -- filters (pure) ------------------------------------------------------------------------------
def test_filters_name_the_reason_of_each_bad_answer():
    assert check(RU_ANSWER) is None
    assert check("  \n ") == "empty"
    assert check(RU_ANSWER, stopped=False) == "truncated"
    assert check(LOOP) == "looping"
    assert check("The capital of Russia is Moscow, its largest city by population.") == "wrong_script"
    assert check("42") is None                        # too few letters to judge the script
    code = ("```python\ndef total(values):\n    result = 0\n    for value in values:\n"
            "        result += value\n    return result\n```\n")
    assert check("Вот функция, которая складывает числа списка:\n" + code) is None


def test_script_is_configured_not_assumed():
    english = "The capital of Russia is Moscow, its largest city by population."
    latin = ScriptMatcher.build(["LATIN"], [])
    assert check(english, matcher=latin) is None
    assert check(RU_ANSWER, matcher=latin) == "wrong_script"
    by_range = ScriptMatcher.build([], ["0400-04FF"])
    assert check(RU_ANSWER, matcher=by_range) is None and check(english, matcher=by_range) == "wrong_script"
    assert check(english, enabled=False) is None


def test_repeated_ngram_share():
    assert repeated_ngram_share("раз два три", 6) == 0.0
    assert repeated_ngram_share(RU_ANSWER, 6) == 0.0
    assert repeated_ngram_share(LOOP, 6) > 0.9


def test_default_filters_keep_real_reference_answers(shared):
    """The defaults drop few of 500 strong-model Russian answers (those in English or Spanish on request)."""
    path = shared / "instruct" / "ru_arena_hard_qwen3_235b_answers.jsonl.xz"
    chats = [json.loads(line)["messages"] for line in lzma.open(path, "rt", encoding="utf-8")]
    records = [{"id": str(i), "prompt": c[0]["content"], "answer": c[1]["content"], "stopped": True}
               for i, c in enumerate(chats)]
    drops = DropLog()
    kept, rejected = filter_answers(records, ScriptFilter(), ["CYRILLIC"], LoopFilter(), JudgeConfig(), drops)
    assert len(kept) + len(rejected) == len(records) == 500
    assert len(rejected) <= 10, drops.to_json()
    assert drops.total == len(rejected) and set(drops.counts) <= {"looping", "wrong_script"}


# -- judge ---------------------------------------------------------------------------------------
def length_judge(prompts: list[str], answers: list[str]) -> list[float]:
    return [len(a) / 100 for a in answers]


def wrong_count_judge(prompts: list[str], answers: list[str]) -> list[float]:
    return [1.0]


def test_judge_plugin_scores_and_thresholds():
    records = [{"id": "a", "prompt": "?", "answer": RU_ANSWER, "stopped": True},
               {"id": "b", "prompt": "?", "answer": "Да, конечно.", "stopped": True},
               {"id": "c", "prompt": "?", "answer": "", "stopped": True}]
    drops = DropLog()
    judge = JudgeConfig(function="tests.integration.test_calibrate:length_judge", threshold=0.5, batch_size=1)
    kept, rejected = filter_answers(records, ScriptFilter(), ["CYRILLIC"], LoopFilter(), judge, drops)
    assert [r["id"] for r in kept] == ["a"] and kept[0]["judge_score"] == pytest.approx(len(RU_ANSWER) / 100)
    assert {r["id"]: r["drop_reason"] for r in rejected} == {"c": "empty", "b": "judge_below_threshold"}
    assert drops.counts == {"empty": 1, "judge_below_threshold": 1}
    bad = JudgeConfig(function="tests.integration.test_calibrate:wrong_count_judge", batch_size=8)
    with pytest.raises(LingraftError, match="1 scores for 2 answers"):
        filter_answers(records, ScriptFilter(), ["CYRILLIC"], LoopFilter(), bad, DropLog())
    with pytest.raises(LingraftError, match="no callable"):
        filter_answers(records, ScriptFilter(), ["CYRILLIC"], LoopFilter(),
                       JudgeConfig(function="tests.integration.test_calibrate:missing"), DropLog())
    with pytest.raises(ConfigError, match="judge.function"):
        JudgeConfig(function="not a spec")


# -- copy tasks ----------------------------------------------------------------------------------
def test_copy_examples_repeat_corpus_passages(shared):
    cfg = CopyConfig(corpus=str(shared / "ru_text" / "ud_russian_sentences.jsonl"), count=12, min_chars=40,
                     max_chars=200, max_candidates=400)
    passages = sample_passages(cfg, seed=1, drops=DropLog())
    assert len(passages) == len(set(passages)) == 12
    assert all(40 <= len(p) <= 200 for p in passages)
    assert passages == sample_passages(cfg, seed=1, drops=DropLog())
    assert passages != sample_passages(cfg, seed=2, drops=DropLog())
    built = build_config(CalibrateConfig, overrides={"instruct": "m", "out": "o", "prompts": ["p.jsonl"],
                                                     "language": "en", "train.enabled": False})
    examples = copy_examples(passages, built.copy_phrasings(), seed=0)
    for ex, text in zip(examples, passages):
        user, assistant = ex["messages"]
        assert assistant == {"role": "assistant", "content": text}
        assert user["role"] == "user" and text in user["content"] and user["content"] != text
        assert any(user["content"] == p.replace("{text}", text) for p in built.copy_phrasings())
    assert "Repeat" in built.copy_phrasings()[0]


def test_replay_passages_exclude_the_copy_tasks(shared):
    from lingraft.propagate.calibrate.config import ReplayConfig
    cfg = ReplayConfig(corpus=str(shared / "ru_text" / "ud_russian_sentences.jsonl"), count=6, min_chars=30,
                       max_chars=120, max_candidates=6)
    every = sample_passages(cfg, 0, DropLog())           # count = candidates: the draw is all of them
    assert len(every) == 6
    assert sample_passages(cfg, 1, DropLog(), exclude=every[:4]) == every[4:]


def test_language_without_preset_must_configure_script_and_phrasings():
    base = {"instruct": "m", "out": "o", "prompts": ["p.jsonl"], "train.enabled": False, "language": "kk"}
    with pytest.raises(ConfigError, match="script.scripts"):
        build_config(CalibrateConfig, overrides=base)
    cfg = build_config(CalibrateConfig, overrides={**base, "script.scripts": ["CYRILLIC"]})
    assert cfg.scripts() == ["CYRILLIC"]
    with pytest.raises(ConfigError, match="copy.phrasings"):
        build_config(CalibrateConfig, overrides={**base, "script.scripts": ["CYRILLIC"], "copy.corpus": "c"})


def test_lora_layers_default_to_first_and_last_block_and_null_means_every_block(tmp_path):
    from lingraft.propagate.calibrate.train import train_config
    base = {"instruct": "m", "model": "m", "out": str(tmp_path), "prompts": ["p.jsonl"]}
    default = train_config(build_config(CalibrateConfig, overrides=base), tmp_path / "sft", 5)
    assert default.lora.layers == [0, -1] and default.max_steps == 5
    every = train_config(build_config(CalibrateConfig, overrides={**base, "train.lora_layers": None}), tmp_path, 5)
    assert every.lora.layers is None
    with pytest.raises(ConfigError, match="train.lora_layers"):
        build_config(CalibrateConfig, overrides={**base, "train.lora_layers": []})


def test_bad_inputs_fail_before_any_generation(shared, tmp_path, run_cli):
    arena = shared / "eval" / "llmtf" / "ru_arena_hard_v0.1_questions.json"
    code, _, err = run_cli("calibrate", "--instruct", "m", "--out", tmp_path, "--prompts", tmp_path / "none.jsonl",
                           "--set", "train.enabled=false")
    assert code == 1 and "none.jsonl: no such file" in err
    code, _, err = run_cli("calibrate", "--instruct", "m", "--model", "m", "--out", tmp_path, "--prompts", arena,
                           "--set", "train.overrides.lora.rr=1")
    assert code == 1 and "lora.rr: unknown key" in err
    code, _, err = run_cli("calibrate", "--instruct", "m", "--out", tmp_path, "--prompts", arena,
                           "--set", "train.enabled=false", "--set", f"replay.corpus={tmp_path / 'no_corpus'}")
    assert code == 1 and "no_corpus: no such file" in err
    code, _, err = run_cli("calibrate", "--instruct", "m", "--out", tmp_path, "--prompts", arena,
                           "--set", "train.enabled=false", "--set", "replay.count=0")
    assert code == 2 and "replay.count: must be >= 1" in err          # a config error: usage


# -- prompts -------------------------------------------------------------------------------------
def test_prompts_from_jsonl_json_array_and_nested_fields(shared, tmp_path):
    seed = shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"
    arena = shared / "eval" / "llmtf" / "ru_arena_hard_v0.1_questions.json"
    chats = shared / "instruct" / "ru_arena_hard_qwen3_235b_answers.jsonl.xz"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"q": "один"}\n{"q": 5}\nnot json\n{"x": 1}\n{"q": "  "}\n{"q": "один", "id": 0}\n')
    drops = DropLog()
    prompts = load_prompts([
        PromptSourceConfig(path=str(seed), id_field="id", input_field="instances.0.input", limit=5),
        PromptSourceConfig(path=str(arena), limit=3),
        PromptSourceConfig(path=str(chats), prompt_field="messages.0.content", limit=2),
        PromptSourceConfig(path=str(broken), prompt_field="q", id_field="id")], drops)
    assert [p.id for p in prompts[:5]] == [f"rulm_ru_alpaca_seed_tasks:seed_task_{i}" for i in range(5)]
    assert prompts[5].id == "ru_arena_hard_v0.1_questions:0" and prompts[5].text.startswith("Какой лучший способ")
    assert prompts[8].id == "ru_arena_hard_qwen3_235b_answers:0" and prompts[8].text == prompts[5].text
    with_input = [p for p in prompts[:5] if "\n\n" in p.text]
    assert with_input, "seed tasks with an input get it appended"
    assert [p.text for p in prompts[10:]] == ["один"]
    assert drops.counts == {"prompt_not_a_string": 1, "invalid_json": 1, "prompt_missing_field": 1,
                            "prompt_empty": 1, "prompt_missing_id": 1}


def test_long_prompts_keep_their_head(smollm2):
    from lingraft.vocabulary.loading import load_tokenizer
    tok = load_tokenizer(smollm2)
    text = "Перескажи этот текст своими словами. " + "Очень длинное условие задачи. " * 40
    ids, short, cut = fit_prompt(tok, text, 64)
    assert cut and len(ids) <= 64 and text.startswith(short) and len(short) > 20
    full, same, cut = fit_prompt(tok, text, 10_000)
    assert not cut and same == text and len(full) > 64
    with pytest.raises(LingraftError, match="no room"):
        fit_prompt(tok, text, 5)


# -- resumable generation and the stage ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_chat_model(smollm2, tmp_path_factory) -> Path:
    """A 2-block random Llama with SmolLM2's tokenizer and chat template: fast, deterministic, varied answers."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    folder = tmp_path_factory.mktemp("tiny_chat")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                         initializer_range=0.2)   # wide enough that greedy answers vary
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(smollm2 / name, folder / name)
    return folder


def write_config(path: Path, model: Path, prompts: Path, out: Path) -> Path:
    """10 seed tasks in 3 batches; a random model's answers all go, so a few copy tasks give the data."""
    copy = {"corpus": str(prompts.parents[1] / "ru_text" / "ud_russian_sentences.jsonl"), "count": 2,
            "max_candidates": 20}
    cfg = {"instruct": str(model), "out": str(out), "train": {"enabled": False}, "copy": copy,
           "prompts": [{"path": str(prompts), "id_field": "id", "limit": 10}],
           "generation": {"max_new_tokens": 6, "batch_size": 4, "max_prompt_tokens": 96}}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def read_generations(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records), "a prompt was answered twice"
    return by_id


@pytest.fixture(scope="module")
def uninterrupted(tiny_chat_model, shared, tmp_path_factory) -> tuple[Path, Path]:
    from lingraft.cli import main
    folder = tmp_path_factory.mktemp("calibrate_ref")
    seed = shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl"
    config = write_config(folder / "cfg.yaml", tiny_chat_model, seed, folder / "out")
    assert main(["calibrate", "--config", str(config)]) == 0
    return config, folder / "out"


def test_generation_resumes_after_sigkill(uninterrupted, tiny_chat_model, shared, tmp_path, run_cli):
    _, ref_out = uninterrupted
    out = tmp_path / "out"
    config = write_config(tmp_path / "cfg.yaml", tiny_chat_model,
                          shared / "instruct" / "rulm_ru_alpaca_seed_tasks.jsonl", out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.calibrate_stall", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    generations = out / "generations.jsonl"
    deadline = time.monotonic() + 120
    while not (generations.exists() and generations.read_bytes().count(b"\n") >= 4):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the first batch never became durable"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)     # the second batch is being generated (or about to be written)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    assert generations.read_bytes().count(b"\n") == 4 and not (out / "manifest.json").exists()

    code, _, err = run_cli("calibrate", "--config", config)
    assert code == 0, err
    resumed, reference = read_generations(out), read_generations(ref_out)
    assert resumed.keys() == reference.keys() and len(resumed) == 10
    assert {k: r["answer"] for k, r in resumed.items()} == {k: r["answer"] for k, r in reference.items()}
    assert len({r["answer"] for r in reference.values()}) > 5, "answers too alike to tell a mix-up"
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["generation_batches"] == 3 and metrics["generation_batches_resumed"] == 1


def test_resume_drops_a_torn_line_and_a_part_written_batch(uninterrupted, tmp_path, run_cli):
    config, ref_out = uninterrupted
    lines = (ref_out / "generations.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "out"
    out.mkdir()
    # batch 0 whole, two records of batch 1, then half a line: what a kill during a write leaves
    (out / "generations.jsonl").write_bytes(b"".join(lines[:6]) + lines[6][:25])
    cfg = yaml.safe_load(config.read_text())
    cfg["out"] = str(out)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    code, _, err = run_cli("calibrate", "--config", tmp_path / "cfg.yaml")
    assert code == 0, err
    assert (out / "generations.jsonl").read_bytes() == (ref_out / "generations.jsonl").read_bytes()
    # Other generation parameters must not be mixed into the same file.
    cfg["generation"]["max_new_tokens"] = 7
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    code, _, err = run_cli("calibrate", "--config", tmp_path / "cfg.yaml")
    assert code == 1 and "other generation parameters" in err


class ScriptedBackend:
    """Answers chosen per prompt: one of each kind the filters must tell apart."""

    def __init__(self, tokenizer, script: dict[str, tuple[str, bool]]) -> None:
        self.tokenizer, self.script = tokenizer, script

    def answer(self, prompts, max_new_tokens):
        from lingraft.propagate.calibrate.generate import Answer
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            answer, stopped = next(v for k, v in self.script.items() if k in text)
            out.append(Answer(answer, 5, stopped))
        return out


def test_stage_counts_drops_writes_chats_and_trains(tiny_chat_model, shared, tmp_path, monkeypatch, run_cli):
    from lingraft.propagate.calibrate import stage as calibrate_stage
    from lingraft.vocabulary.loading import load_tokenizer
    script = {"Столица": (RU_ANSWER, True), "Пусто": ("", True), "Обрыв": (RU_ANSWER[:30], False),
              "Петля": (LOOP, True), "Английский": ("Moscow is the capital and the largest city of Russia.", True),
              "Длинный": ("Хорошо, вот краткий пересказ длинного текста.", True)}
    prompts = tmp_path / "prompts.json"
    items = [{"instruction": k + "?"} for k in script]
    items[-1]["instruction"] = "Длинный " + "текст задачи очень длинный " * 60   # longer than the context
    prompts.write_text(json.dumps(items + [{"instruction": ""}], ensure_ascii=False))
    tok = load_tokenizer(tiny_chat_model)
    monkeypatch.setattr(calibrate_stage, "open_backend", lambda *a: ScriptedBackend(tok, script))
    out = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "instruct": str(tiny_chat_model), "model": str(tiny_chat_model), "out": str(out),
        "prompts": [{"path": str(prompts)}], "generation": {"max_new_tokens": 32, "batch_size": 4},
        "copy": {"corpus": str(shared / "ru_text" / "ud_russian_sentences.jsonl"), "count": 3, "min_chars": 30,
                 "max_chars": 120, "max_candidates": 50},
        "replay": {"corpus": str(shared / "ru_text" / "ud_russian_sentences.jsonl"), "count": 2, "min_chars": 30,
                   "max_chars": 120, "max_candidates": 50},
        "train": {"seq_len": 192, "max_steps": 2, "micro_batch_size": 1, "grad_accum_steps": 1,
                  "overrides": {"log.tensorboard": False, "log.plot": False, "device": "cpu"}}},
        allow_unicode=True))
    code, _, err = run_cli("calibrate", "--config", config)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["prompts_usable"] == 6 and m["prompts_dropped"]["prompt_empty"]["count"] == 1
    assert m["prompts_truncated"] == 1 and m["prompt_token_budget"] == 160 - 32
    assert m["answers_generated"] == 6 and m["answers_kept"] == 2
    assert {k: v["count"] for k, v in m["answers_dropped"].items()} == {
        "empty": 1, "truncated": 1, "looping": 1, "wrong_script": 1}
    records = [json.loads(line) for line in (out / "calibration.jsonl").read_text().splitlines()]
    assert len(records) == m["calibration_examples"] == 2 + 3 + 2 and m["copy_examples"] == 3
    replays = [r for r in records if r["source"] == "replay"]
    assert m["replay_examples"] == len(replays) == 2 and all(set(r) == {"id", "source", "text"} for r in replays)
    copied = {r["messages"][1]["content"] for r in records if r["source"] == "copy"}
    assert not copied & {r["text"] for r in replays}            # other passages than the copy tasks'
    chats = [r for r in records if r["source"] != "replay"]
    assert all([msg["role"] for msg in c["messages"]] == ["user", "assistant"] for c in chats)
    answers = {c["messages"][1]["content"] for c in chats if c["source"] != "copy"}
    assert answers == {RU_ANSWER, script["Длинный"][0]}
    long_prompt = next(c for c in chats if c["messages"][1]["content"] == script["Длинный"][0])
    assert items[-1]["instruction"].startswith(long_prompt["messages"][0]["content"])
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["drop_reason"] for r in rejected) == ["empty", "looping", "truncated", "wrong_script"]
    train = m["train"]
    assert train["max_steps"] == 2 and train["packed_chats"] == 7      # the replay passages as documents
    assert (Path(train["model"]) / "config.json").is_file()
    assert json.loads((Path(train["model"]) / "manifest.json").read_text())["metrics"]["trainable"] == "lora"


def test_training_restarts_when_calibration_data_changes(tmp_path):
    """Resuming a run trained on other chats would silently mix old and new calibration data."""
    from lingraft.propagate.calibrate.train import FINGERPRINT_FILE, fresh_run_dir
    run = tmp_path / "train"
    fresh_run_dir(run, "a")
    (run / "checkpoints").mkdir()
    fresh_run_dir(run, "a")                      # same data and settings: the run is resumed
    assert (run / "checkpoints").is_dir()
    fresh_run_dir(run, "b")                      # other data: started afresh
    assert not (run / "checkpoints").exists() and (run / FINGERPRINT_FILE).read_text() == "b"

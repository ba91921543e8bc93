"""`lingraft calibrate`: LEP self-calibration of a propagated model.

    generate  the original instruct model answers the prompts greedily (resumable:
              <out>/generations.jsonl, see calibrate_generate)
    filter    empty, truncated, looping and wrong-script answers go, then an optional judge
              (<out>/rejected.jsonl keeps them with their reason)
    copy      corpus passages become "repeat this text" chats
    replay    other corpus passages stay plain text (`{"text": ...}` records), optional
    write     <out>/calibration.jsonl: one record per line, answers, copy tasks and replay
              shuffled together
    train     pack with `prep sft`, fine-tune with LoRA (the paper's r=8, alpha=1, lr 2.5e-5
              on the first and last blocks, tables in full), export to <out>/model

A rerun after a kill resumes generation where it stopped and redoes the cheap steps;
the training run resumes from its own checkpoints when the calibration data and training
settings are unchanged, and starts afresh otherwise. manifest.json, written last, counts every prompt and answer
dropped, by reason. A config, e.g.:

    instruct: models/instruct            # answers the prompts
    model: runs/propagated               # fine-tuned on the answers
    out: runs/calibrate
    prompts:
      - {path: rulm_ru_alpaca_seed_tasks.jsonl, id_field: id, input_field: instances.0.input}
      - {path: ru_arena_hard_qwen3_235b_answers.jsonl.xz, prompt_field: messages.0.content}
    generation: {max_new_tokens: 1024, batch_size: 512}
    copy: {corpus: ruslit.jsonl.xz, count: 500}
    replay: {corpus: training_mix, count: 128}   # text the model already reads, kept in place
"""
from __future__ import annotations

import gc
import json
import random
import time
from pathlib import Path
from statistics import fmean
from typing import Any

from lingraft.data_prep.records import DropLog
from lingraft.atomic import atomic_open, clean_stale_tmp
from lingraft.hf_folder import resolve_model
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.manifest import new_manifest
from lingraft.propagate.calibrate.config import CalibrateConfig, PassageConfig
from lingraft.propagate.calibrate.copy import copy_examples, replay_examples, sample_passages
from lingraft.propagate.calibrate.filters import filter_answers
from lingraft.propagate.calibrate.generate import (
    GENERATIONS,
    backend_name,
    fit_prompts,
    generate_resumable,
    model_context,
    open_backend,
    prompt_budget,
    prompts_fingerprint,
)
from lingraft.propagate.calibrate.prompts import load_prompts

log = get_logger(__name__)

CALIBRATION = "calibration.jsonl"
REJECTED = "rejected.jsonl"


def generation_params(cfg: CalibrateConfig, folder: Path, backend: str, budget: int, fingerprint: str) -> dict:
    """What decides the answers; stored with every generated record and checked on resume."""
    g = cfg.generation
    return {"model": str(folder.resolve()), "backend": backend, "decoding": "greedy", "dtype": g.dtype,
            "max_new_tokens": g.max_new_tokens, "max_prompt_tokens": budget, "long_prompts": g.long_prompts,
            "batch_size": g.batch_size, "seed": cfg.seed, "prompts_sha256": fingerprint}


def answer_chat(rec: dict[str, Any]) -> dict[str, Any]:
    return {"id": rec["id"], "source": rec["source"],
            "messages": [{"role": "user", "content": rec["prompt"]},
                         {"role": "assistant", "content": rec["answer"].strip()}]}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def release_accelerator_memory() -> None:
    """The generating model is gone by now; give its memory back before training starts."""
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warn_if_short(cfg: PassageConfig, got: int) -> None:
    if got < cfg.count:
        log.warning("%s: the corpus gave %d passages of %d-%d characters, fewer than %s.count=%d", cfg.setting, got,
                    cfg.min_chars, cfg.max_chars, cfg.setting, cfg.count)


def run_calibrate(cfg: CalibrateConfig) -> Path:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)
    for path in [p.path for p in cfg.prompts] + [c for c in (cfg.copy.corpus, cfg.replay.corpus) if c]:
        if not Path(path).exists():   # found now, not after hours of generation
            raise LingraftError(f"{path}: no such file or folder")
    if cfg.train.enabled:   # a bad train setting fails now, not after hours of generation
        from lingraft.propagate.calibrate.train import train_config
        train_config(cfg, out, cfg.train.max_steps or 1)

    # generate
    prompt_drops = DropLog()
    prompts = load_prompts(cfg.prompts, prompt_drops)
    folder = resolve_model(cfg.instruct)
    from lingraft.vocabulary.loading import load_tokenizer
    tokenizer = load_tokenizer(folder, cfg.generation.trust_remote_code)
    budget = prompt_budget(cfg.generation, model_context(folder, cfg.generation.trust_remote_code))
    fitted, truncated = fit_prompts(prompts, tokenizer, budget, cfg.generation.long_prompts, prompt_drops)
    backend = backend_name(cfg.generation)
    params = generation_params(cfg, folder, backend, budget, prompts_fingerprint(fitted))
    run = generate_resumable(fitted, lambda: open_backend(backend, folder, cfg.generation, cfg.seed),
                             out / GENERATIONS, params, cfg.generation.batch_size, cfg.generation.max_new_tokens)
    release_accelerator_memory()

    # filter
    answer_drops = DropLog()
    kept, rejected = filter_answers(run.records, cfg.script, cfg.scripts(), cfg.loop, cfg.judge, answer_drops)
    write_jsonl(out / REJECTED, rejected)

    # copy tasks
    copy_drops = DropLog()
    copy_passages: list[str] = []
    copies: list[dict[str, Any]] = []
    if cfg.copy.corpus is not None:   # the phrasings exist only then (a language without a preset)
        copy_passages = sample_passages(cfg.copy, cfg.seed, copy_drops)
        copies = copy_examples(copy_passages, cfg.copy_phrasings(), cfg.seed)
        warn_if_short(cfg.copy, len(copies))

    replay_drops = DropLog()
    replays: list[dict[str, Any]] = []
    if cfg.replay.corpus is not None:   # other passages than the copy tasks', even from the same corpus
        replays = replay_examples(sample_passages(cfg.replay, cfg.seed + 1, replay_drops, exclude=copy_passages))
        warn_if_short(cfg.replay, len(replays))

    examples = [answer_chat(r) for r in kept] + copies + replays
    random.Random(cfg.seed).shuffle(examples)
    if not examples:
        raise LingraftError(f"calibrate: every answer was dropped ({dict(answer_drops.counts)}) and no copy or replay "
                            "corpus is set; nothing to train on")
    write_jsonl(out / CALIBRATION, examples)
    log.info("calibration data: %d answers kept of %d (dropped %s), %d copy tasks, %d replay passages -> %s",
             len(kept), len(run.records), dict(answer_drops.counts), len(copies), len(replays), out / CALIBRATION)

    metrics: dict[str, Any] = {
        "prompts_usable": len(prompts), "prompts_dropped": prompt_drops.to_json(),
        "prompts_truncated": truncated, "prompt_token_budget": budget,
        "answers_generated": len(run.records), "answers_kept": len(kept), "answers_dropped": answer_drops.to_json(),
        "answer_tokens_mean": round(fmean(r["answer_tokens"] for r in run.records), 2),
        "generation_batches": run.batches, "generation_batches_resumed": run.batches_resumed,
        "generation_new_tokens": run.new_tokens, "generation_seconds": round(run.seconds, 3),
        "generation_tokens_per_s": round(run.new_tokens / run.seconds, 2) if run.seconds else None,
        "copy_examples": len(copies), "copy_corpus_dropped": copy_drops.to_json(),
        "replay_examples": len(replays), "replay_corpus_dropped": replay_drops.to_json(),
        "calibration_examples": len(examples),
    }
    outputs: dict[str, Any] = {"generations": GENERATIONS, "calibration": CALIBRATION, "rejected": REJECTED}
    if cfg.train.enabled:
        from lingraft.propagate.calibrate.train import run_training
        metrics["train"] = run_training(cfg, out / CALIBRATION)
        outputs["model"] = metrics["train"]["model"]
    metrics["seconds"] = round(time.perf_counter() - started, 3)

    inputs: dict[str, Any] = {"instruct": folder, **{f"prompts.{p.name}": p.path for p in cfg.prompts}}
    if cfg.train.enabled:
        inputs["model"] = cfg.model
    if cfg.copy.corpus is not None:
        inputs["copy_corpus"] = cfg.copy.corpus
    if cfg.replay.corpus is not None:
        inputs["replay_corpus"] = cfg.replay.corpus
    manifest = new_manifest("calibrate", cfg, inputs=inputs)
    manifest.outputs, manifest.metrics = outputs, metrics
    manifest.write(out)
    return out

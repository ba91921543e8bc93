"""`lingraft eval speed`: generation throughput in tokens/s and characters/s.

The same prompts go, through each model's own chat template, to the adapted model and (with
--baseline) to its original; generation is greedy, batched, after one untimed warm-up pass.
Characters/s is what a user feels: a denser tokenizer writes more characters per step, so an
adapted model can be faster in characters/s even at equal tokens/s.
"""
from __future__ import annotations

from typing import Any

from lingraft.evaluation.config import SpeedEvalConfig
from lingraft.evaluation.data import parse_set_spec, read_texts
from lingraft.evaluation.generation import chat_prompt_ids, timed_generate
from lingraft.evaluation.models import LoadedModel, load_model
from lingraft.evaluation.results import write_result
from lingraft.log import get_logger

log = get_logger(__name__)


def measure(loaded: LoadedModel, prompts: list[str], cfg: SpeedEvalConfig) -> dict[str, Any]:
    ids = [chat_prompt_ids(loaded.tokenizer, p) for p in prompts]
    warm = ids[:cfg.batch_size]
    timed_generate(loaded.model, loaded.tokenizer, warm, min(cfg.max_new_tokens, 8), cfg.batch_size, cfg.ignore_eos)
    tokens = chars = 0
    seconds = 0.0
    for _ in range(cfg.repeats):
        gens, elapsed = timed_generate(loaded.model, loaded.tokenizer, ids, cfg.max_new_tokens, cfg.batch_size,
                                       cfg.ignore_eos)
        tokens += sum(g.tokens for g in gens)
        chars += sum(len(g.text) for g in gens)
        seconds += elapsed
    result = {"tokens_per_s": tokens / seconds, "chars_per_s": chars / seconds,
              "chars_per_token": chars / tokens if tokens else 0.0, "new_tokens": tokens, "new_chars": chars,
              "seconds": seconds, "n_prompts": len(prompts), "prompt_tokens": sum(map(len, ids))}
    log.info("speed %s: %.1f tokens/s, %.1f chars/s (%d tokens, %d chars, %.1f s)", loaded.name,
             result["tokens_per_s"], result["chars_per_s"], tokens, chars, seconds)
    return result


def run_speed(cfg: SpeedEvalConfig) -> dict[str, Any]:
    prompts = read_texts(cfg.data, cfg.text_field, max_docs=cfg.max_prompts)
    loaded = load_model(cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
    metrics = measure(loaded, prompts, cfg)
    meta = loaded.describe()
    del loaded
    if cfg.baseline:
        base = load_model(cfg.baseline, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
        metrics["baseline"] = {"model": base.name, **measure(base, prompts, cfg)}
        for key in ("tokens_per_s", "chars_per_s"):
            metrics[f"{key}_vs_baseline"] = metrics[key] / metrics["baseline"][key]
        meta["baseline"] = base.describe()
    line = f"{meta['model']}: {metrics['tokens_per_s']:.1f} tokens/s, {metrics['chars_per_s']:.1f} chars/s"
    if cfg.baseline:
        line += f" ({metrics['chars_per_s_vs_baseline']:.2f}x the chars/s of {metrics['baseline']['model']})"
    print(line)
    return write_result(cfg.out, "speed", meta["model"], parse_set_spec(cfg.data, cfg.text_field)[0], metrics, cfg,
                        {"data": cfg.data}, meta)

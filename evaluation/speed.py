"""`lingraft eval speed`: generation throughput in tokens/s and characters/s.

The same prompts go, through each model's own chat template, to the adapted model and (with
--baseline) to its original; generation is greedy, batched, after one untimed warm-up pass.
Characters/s is what a user feels: a denser tokenizer writes more characters per step, so an
adapted model can be faster in characters/s even at equal tokens/s.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from lingraft.evaluation.config import SpeedEvalConfig
from lingraft.evaluation.generation import chat_prompt_ids, timed_generate
from lingraft.evaluation.models import LoadedModel, load_model, split_name
from lingraft.evaluation.pairs import EvalSet, Measured, run_pairs
from lingraft.evaluation.results import EvalResult
from lingraft.evaluation.text_tasks import text_sets
from lingraft.log import get_logger

log = get_logger(__name__)
RATIOS = ("tokens_per_s", "chars_per_s")


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


def with_ratios(records: list[EvalResult], baseline: str) -> list[EvalResult]:
    """Each other model's record gains tokens_per_s_vs_baseline and chars_per_s_vs_baseline
    (the baseline's record of the same prompts divides)."""
    base = {r.label: r.metrics for r in records if r.model == baseline}
    done = []
    for r in records:
        if r.model != baseline:
            ratios = {f"{k}_vs_baseline": r.metrics[k] / base[r.label][k] for k in RATIOS}
            r = replace(r, metrics={**r.metrics, **ratios}, meta={**r.meta, "baseline": baseline})
            print(f"{r.model} on {r.label}: {ratios['chars_per_s_vs_baseline']:.2f}x the chars/s of {baseline}")
        done.append(r)
    return done


def run_speed(cfg: SpeedEvalConfig) -> list[EvalResult]:
    """Every model on every prompts file; with a baseline, the baseline first."""
    def measure_pair(loaded: LoadedModel, data: EvalSet[list[str]]) -> Measured:
        metrics = measure(loaded, data.items, cfg)
        print(f"{loaded.name} on {data.name}: {metrics['tokens_per_s']:.1f} tokens/s, "
              f"{metrics['chars_per_s']:.1f} chars/s")
        return metrics, {}

    models = ([cfg.baseline] if cfg.baseline else []) + list(cfg.model)
    finish = (lambda records: with_ratios(records, split_name(cfg.baseline)[0])) if cfg.baseline else None
    return run_pairs("speed", cfg, text_sets(cfg.data, cfg.text_field, max_docs=cfg.max_prompts), measure_pair,
                     lambda spec: load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed),
                     axes=("model", "data"), models=models, finish=finish)

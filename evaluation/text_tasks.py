"""`lingraft eval bpc` and `lingraft eval tokenizer`: the two tasks that only read text."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from lingraft.evaluation.bpc import bits_per_character
from lingraft.evaluation.config import BpcEvalConfig, TokenizerEvalConfig
from lingraft.evaluation.data import parse_set_spec, read_texts
from lingraft.evaluation.models import load_model, split_name
from lingraft.evaluation.results import write_result
from lingraft.log import get_logger

log = get_logger(__name__)


def run_bpc(cfg: BpcEvalConfig) -> dict[str, Any]:
    texts = read_texts(cfg.data, cfg.text_field, cfg.max_docs, cfg.max_chars)
    loaded = load_model(cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
    start = time.perf_counter()
    result = bits_per_character(loaded.model, loaded.tokenizer, texts, max_length=cfg.max_length,
                                batch_tokens=cfg.batch_tokens, stride=cfg.stride, desc=f"bpc {loaded.name}")
    seconds = time.perf_counter() - start
    log.info("%s: %.4f bits/char, %.4f bits/byte over %d chars, %d tokens (%.1f s, %.0f chars/s)", loaded.name,
             result.bits_per_character, result.bits_per_byte, result.characters, result.tokens, seconds,
             result.characters / seconds)
    label = cfg.name or parse_set_spec(cfg.data, cfg.text_field)[0]
    print(f"{loaded.name} on {label}: {result.bits_per_character:.4f} bits/char, "
          f"{result.bits_per_byte:.4f} bits/byte ({result.characters:,} chars, {result.tokens:,} tokens)")
    return write_result(cfg.out, "bpc", loaded.name, label, result.to_json(), cfg, {"data": cfg.data},
                        {**loaded.describe(), "seconds": seconds, "chars_per_s": result.characters / seconds})


def run_tokenizer(cfg: TokenizerEvalConfig) -> dict[str, Any]:
    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.stats import count_text, tokenizer_stats
    from lingraft.hf_folder import resolve_model
    texts = read_texts(cfg.data, cfg.text_field, max_chars=cfg.max_chars)
    name, spec = split_name(cfg.model)
    folder = resolve_model(spec)
    counts = count_text(texts)
    stats = tokenizer_stats(load_tokenizer(folder, cfg.trust_remote_code), texts, counts)
    label = cfg.name or parse_set_spec(cfg.data, cfg.text_field)[0]
    print(f"{name} on {label}: {stats.chars_per_token:.3f} chars/token, {stats.tokens_per_word:.3f} tokens/word")
    return write_result(cfg.out, "tokenizer", name, label, {**asdict(stats), **asdict(counts)}, cfg,
                        {"data": cfg.data}, {"model_path": str(folder)})

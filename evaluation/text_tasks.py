"""`lingraft eval bpc` and `lingraft eval tokenizer`: the two tasks that only read text."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lingraft.evaluation.bpc import bits_per_character
from lingraft.evaluation.config import BpcEvalConfig, DataSet, TokenizerEvalConfig
from lingraft.evaluation.data import read_texts
from lingraft.evaluation.models import LoadedModel, load_model, split_name
from lingraft.evaluation.pairs import EvalSet, Measured, run_pairs
from lingraft.evaluation.results import EvalResult
from lingraft.log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)


def text_sets(data: list[DataSet], text_field: str, max_docs: int | None = None,
              max_chars: int | None = None) -> list[EvalSet[list[str]]]:
    return [EvalSet(d, d.name, Path(d.path), read_texts(str(d.path), d.field_or(text_field), max_docs, max_chars))
            for d in data]


def run_bpc(cfg: BpcEvalConfig) -> list[EvalResult]:
    def measure(loaded: LoadedModel, data: EvalSet[list[str]]) -> Measured:
        start = time.perf_counter()
        result = bits_per_character(loaded.model, loaded.tokenizer, data.items, max_length=cfg.max_length,
                                    batch_tokens=cfg.batch_tokens, stride=cfg.stride,
                                    desc=f"bpc {loaded.name} {data.name}")
        seconds = time.perf_counter() - start
        log.info("%s on %s: %.4f bits/char, %.4f bits/byte over %d chars, %d tokens (%.1f s, %.0f chars/s)",
                 loaded.name, data.name, result.bits_per_character, result.bits_per_byte, result.characters,
                 result.tokens, seconds, result.characters / seconds)
        print(f"{loaded.name} on {data.name}: {result.bits_per_character:.4f} bits/char, "
              f"{result.bits_per_byte:.4f} bits/byte ({result.characters:,} chars, {result.tokens:,} tokens)")
        return result.to_json(), {"seconds": seconds, "chars_per_s": result.characters / seconds}

    return run_pairs("bpc", cfg, text_sets(cfg.data, cfg.text_field, cfg.max_docs, cfg.max_chars), measure,
                     lambda spec: load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed),
                     axes=("model", "data"))


@dataclass
class LoadedTokenizer:
    name: str
    folder: Path
    tokenizer: "PreTrainedTokenizerFast"

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "model_path": str(self.folder), "vocab_size": len(self.tokenizer)}


def run_tokenizer(cfg: TokenizerEvalConfig) -> list[EvalResult]:
    from lingraft.hf_folder import resolve_model
    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.stats import count_text, tokenizer_stats

    def load(spec: str) -> LoadedTokenizer:
        name, bare = split_name(spec)
        folder = resolve_model(bare)
        return LoadedTokenizer(name, folder, load_tokenizer(folder, cfg.trust_remote_code))

    def measure(loaded: LoadedTokenizer, data: EvalSet[list[str]]) -> Measured:
        counts = count_text(data.items)
        stats = tokenizer_stats(loaded.tokenizer, data.items, counts)
        print(f"{loaded.name} on {data.name}: {stats.chars_per_token:.3f} chars/token, "
              f"{stats.tokens_per_word:.3f} tokens/word")
        values = {**asdict(stats), **asdict(counts)}
        text = {k: values.pop(k) for k in ("kind", "fingerprint")}    # the tokenizer's, not numbers
        return values, {"tokenizer": text}

    return run_pairs("tokenizer", cfg, text_sets(cfg.data, cfg.text_field, max_chars=cfg.max_chars), measure, load,
                     axes=("model", "data"))

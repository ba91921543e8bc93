"""`lingraft eval copy`: the Darumeru copy task.

The model is asked, through its chat template and with greedy decoding, to repeat a sentence
or a paragraph. A model whose new vocabulary or embeddings are broken fails here first: it
drops, repeats or garbles text even when its bits per character look fine.

Metrics (as in the Darumeru paper), per set:
  sentences   mean token length ratio min(p/s, s/p), with p and s the lengths in the model's
              own tokens of the prediction and of the source (both stripped).
  paragraphs  share of outputs whose character match with the source is >= 99%, where the
              character match is difflib's ratio 2*M/(len(a)+len(b)) on the stripped strings.
Every set also reports the mean character match and the exact-match share.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from itertools import islice
from statistics import fmean
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from lingraft.data_prep.readers import iter_texts
from lingraft.evaluation.config import CopyEvalConfig
from lingraft.evaluation.data import parse_set_spec
from lingraft.evaluation.generation import chat_prompt_ids, generate_greedy
from lingraft.evaluation.models import load_model
from lingraft.evaluation.results import write_result
from lingraft.errors import LingraftError
from lingraft.log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)
PARAGRAPH_MATCH = 0.99


# -- metrics (pure) ------------------------------------------------------------------------------
def length_ratio(prediction_tokens: int, source_tokens: int) -> float:
    """min(p/s, s/p); 1 when both are empty, 0 when exactly one is."""
    if prediction_tokens == source_tokens:
        return 1.0
    if not prediction_tokens or not source_tokens:
        return 0.0
    return min(prediction_tokens / source_tokens, source_tokens / prediction_tokens)


def char_match(prediction: str, source: str) -> float:
    return difflib.SequenceMatcher(None, prediction.strip(), source.strip(), autojunk=False).ratio()


def copy_metrics(kind: str, sources: Sequence[str], predictions: Sequence[str],
                 count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """The metrics of one set (see the module docstring)."""
    if len(sources) != len(predictions) or not sources:
        raise ValueError("need as many predictions as sources, and at least one")
    matches = [char_match(p, s) for p, s in zip(predictions, sources)]
    metrics: dict[str, Any] = {"kind": kind, "n": len(sources), "mean_char_match": fmean(matches),
                               "exact_match": fmean(p.strip() == s.strip() for p, s in zip(predictions, sources))}
    if kind == "sentence":
        metrics["length_ratio"] = fmean(length_ratio(count_tokens(p.strip()), count_tokens(s.strip()))
                                        for p, s in zip(predictions, sources))
    else:
        metrics["match_share"] = fmean(m >= PARAGRAPH_MATCH for m in matches)
    return metrics


# -- items ---------------------------------------------------------------------------------------
def paragraphs_of(texts: Iterator[str], min_chars: int, max_chars: int) -> Iterator[str]:
    """Lines of the documents that are paragraph-sized (blank-line or newline separated)."""
    for text in texts:
        for line in text.split("\n"):
            line = " ".join(line.split())   # one paragraph is one line; runs of spaces are layout
            if min_chars <= len(line) <= max_chars:
                yield line


@dataclass
class CopySet:
    name: str
    kind: str          # "sentence" or "paragraph"
    path: str
    items: list[str]


def load_set(spec: str, kind: str, cfg: CopyEvalConfig) -> CopySet:
    name, path, field = parse_set_spec(spec, cfg.text_field)
    texts = (t.strip() for t in iter_texts(path, field))
    if kind == "paragraph":
        texts = paragraphs_of(texts, *cfg.paragraph_chars)
    items = list(islice((t for t in texts if t), cfg.max_items))
    if not items:
        raise LingraftError(f"{path}: no {kind}s found in field {field!r}")
    return CopySet(name, kind, path, items)


def run_copy(cfg: CopyEvalConfig) -> dict[str, Any]:
    sets = [load_set(spec, kind, cfg) for kind, specs in
            (("sentence", cfg.sentences), ("paragraph", cfg.paragraphs)) for spec in specs]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise LingraftError(f"copy set names clash ({names}); name them with name=FILE")
    loaded = load_model(cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
    tok = loaded.tokenizer
    results: dict[str, Any] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    for s in sets:
        prompts = [chat_prompt_ids(tok, cfg.prompt.replace("{text}", item)) for item in s.items]
        # Room for a faithful copy plus slack, so a model that never stops cannot run for long.
        caps = [min(cfg.max_new_tokens, 2 * _count(tok, item) + 16) for item in s.items]
        gens = generate_greedy(loaded.model, tok, prompts, caps, cfg.batch_size, desc=f"copy {s.name}")
        predictions = [g.text for g in gens]
        results[s.name] = copy_metrics(s.kind, s.items, predictions, lambda text: _count(tok, text))
        examples[s.name] = [{"source": a, "prediction": b} for a, b in zip(s.items[:3], predictions[:3])]
        log.info("copy %s (%s): %s", s.name, s.kind, {k: v for k, v in results[s.name].items() if k != "kind"})
    metrics = {"sentence_length_ratio": _mean_of(results, "length_ratio"),
               "paragraph_match_share": _mean_of(results, "match_share"), "sets": results}
    print(f"{loaded.name} copy: " + ", ".join(f"{s}: {_fmt(r.get('length_ratio', r.get('match_share')))}"
                                             for s, r in results.items())
          + f"  (sentence length ratio {_fmt(metrics['sentence_length_ratio'])}, "
          f"paragraph match share {_fmt(metrics['paragraph_match_share'])})")
    return write_result(cfg.out, "copy", loaded.name, "+".join(names), metrics, cfg,
                        {s.name: s.path for s in sets}, {**loaded.describe(), "examples": examples})


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _count(tok: "PreTrainedTokenizerFast", text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _mean_of(results: dict[str, dict[str, Any]], key: str) -> float | None:
    """Mean over the sets that have `key` (each set weighs the same); None when none has it."""
    values = [r[key] for r in results.values() if key in r]
    return fmean(values) if values else None

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
from itertools import islice
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from lingraft.config import to_dict
from lingraft.data_prep.readers import iter_texts
from lingraft.errors import LingraftError
from lingraft.evaluation.config import CopyEvalConfig, DataSet
from lingraft.evaluation.generation import chat_prompt_ids, generate_greedy
from lingraft.evaluation.models import LoadedModel, load_model
from lingraft.evaluation.pairs import EvalSet, Measured, run_pairs
from lingraft.evaluation.results import EvalResult
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
                 count_tokens: Callable[[str], int]) -> dict[str, float]:
    """The metrics of one set (see the module docstring)."""
    if len(sources) != len(predictions) or not sources:
        raise ValueError("need as many predictions as sources, and at least one")
    matches = [char_match(p, s) for p, s in zip(predictions, sources)]
    metrics: dict[str, float] = {"n": len(sources), "mean_char_match": fmean(matches),
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


def load_set(data: DataSet, kind: str, cfg: CopyEvalConfig) -> EvalSet[list[str]]:
    field = data.field_or(cfg.text_field)
    texts = (t.strip() for t in iter_texts(str(data.path), field))
    if kind == "paragraph":
        texts = paragraphs_of(texts, *cfg.paragraph_chars)
    items = list(islice((t for t in texts if t), cfg.max_items))
    if not items:
        raise LingraftError(f"{data.path}: no {kind}s found in field {field!r}")
    return EvalSet({"kind": kind, **to_dict(data)}, data.name, Path(data.path), items)


def run_copy(cfg: CopyEvalConfig) -> list[EvalResult]:
    sets = [load_set(data, kind, cfg) for kind, entries in
            (("sentence", cfg.sentences), ("paragraph", cfg.paragraphs)) for data in entries]

    def measure(loaded: LoadedModel, data: EvalSet[list[str]]) -> Measured:
        tok, kind = loaded.tokenizer, data.spec["kind"]
        prompts = [chat_prompt_ids(tok, cfg.prompt.replace("{text}", item)) for item in data.items]
        # Room for a faithful copy plus slack, so a model that never stops cannot run for long.
        caps = [min(cfg.max_new_tokens, 2 * _count(tok, item) + 16) for item in data.items]
        gens = generate_greedy(loaded.model, tok, prompts, caps, cfg.batch_size, desc=f"copy {loaded.name} {data.name}")
        predictions = [g.text for g in gens]
        metrics = copy_metrics(kind, data.items, predictions, lambda text: _count(tok, text))
        print(f"{loaded.name} copy {data.name} ({kind}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
        return metrics, {"kind": kind, "examples": [{"source": a, "prediction": b}
                                                    for a, b in zip(data.items[:3], predictions[:3])]}

    return run_pairs("copy", cfg, sets, measure,
                     lambda spec: load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed),
                     axes=("model", "sentences", "paragraphs"))


def _count(tok: "PreTrainedTokenizerFast", text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])

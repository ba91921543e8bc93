"""`lingraft eval mc`: multiple choice by log-likelihood.

An item is {"context": str, "choices": [str, ...], "label": int} (optionally "group"). Each
choice is scored as the sum of log p(choice tokens | start token, few-shot examples, context);
the choice's tokens are those that `context + choice` has beyond `context`'s tokens, as in
lm-evaluation-harness. Two predictions are made per item:
  acc       argmax of the log-likelihood;
  acc_norm  argmax of the log-likelihood per character of the choice (no tokenizer bias, so
            models with different vocabularies compare fairly).
Items that share a "group" form one question, right only if all of them are right (PARus in
both option orders). A label out of range, or fewer than two choices, skips the item and
counts it (strict mode: an error); a record without the schema's fields is an error.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from lingraft.data_prep.records import DropLog
from lingraft.evaluation.bpc import Window, score_windows, start_token_id
from lingraft.evaluation.config import McEvalConfig
from lingraft.evaluation.mc_adapters import source_records
from lingraft.evaluation.models import LoadedModel, load_model
from lingraft.evaluation.pairs import EvalSet, Measured, run_pairs
from lingraft.evaluation.results import EvalResult
from lingraft.errors import LingraftError
from lingraft.log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = get_logger(__name__)
FIELDS = ("context", "choices", "label")


@dataclass(frozen=True)
class McItem:
    context: str
    choices: tuple[str, ...]
    label: int
    group: str
    where: str


def validate(record: dict[str, Any], where: str, drops: DropLog) -> McItem | None:
    """A checked item, or None (dropped and counted) when the item cannot be scored."""
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise LingraftError(f"{where}: missing field {missing[0]!r} (has: {', '.join(record)}); "
                            f"a multiple-choice item needs {', '.join(FIELDS)}")
    context, choices, label = (record[f] for f in FIELDS)
    if not isinstance(context, str) or not isinstance(choices, list) or \
            not all(isinstance(c, str) and c for c in choices):
        drops.drop("bad_types", where, record)
        return None
    if len(choices) < 2:
        drops.drop("single_choice", where, record)
        return None
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        drops.drop("label_out_of_range", where, record)
        return None
    return McItem(context, tuple(choices), label, str(record.get("group", where)), where)


def load_items(fmt: str, path: str, limit: int | None, drops: DropLog) -> list[McItem]:
    """The valid items of the first `limit` questions (a PARus question is two items)."""
    items: list[McItem] = []
    groups: set[str] = set()
    for where, record in source_records(fmt, path):
        item = validate(record, where, drops)
        if item is None:
            continue
        if limit is not None and item.group not in groups and len(groups) >= limit:
            break
        groups.add(item.group)
        items.append(item)
    if not items:
        reasons = f" ({drops.total} skipped: {dict(drops.counts)})" if drops.total else " (empty file?)"
        raise LingraftError(f"{path}: no multiple-choice item to score{reasons}")
    return items


def prompts_with_shots(items: Sequence[McItem], k: int, separator: str, seed: int) -> list[str]:
    """Each item's context after `k` solved examples drawn (deterministically, per item) from the
    other questions of the same set."""
    if k == 0:
        return [item.context for item in items]
    prompts = []
    for index, item in enumerate(items):
        pool = [other for other in items if other.group != item.group]
        if len(pool) < k:
            raise LingraftError(f"{k}-shot needs more than {k} questions, the set has {len(items)} items")
        shots = random.Random(f"{seed}:{index}").sample(pool, k)
        prompts.append(separator.join([*(s.context + s.choices[s.label] for s in shots), item.context]))
    return prompts


def choice_windows(tokenizer: "PreTrainedTokenizerFast", prompt: str, choices: Iterable[str], start: int,
                   max_length: int) -> list[Window]:
    context_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    windows = []
    for choice in choices:
        whole = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(context_ids):] if whole[:len(context_ids)] == context_ids else \
            tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not 1 <= len(cont) < max_length:
            raise LingraftError(f"choice {choice[:40]!r} is {len(cont)} tokens; max_length is {max_length}")
        tokens = [start, *context_ids, *cont][-(max_length + 1):]   # a long context loses its start
        windows.append(Window(tokens, len(cont)))
    return windows


def accuracy(items: Sequence[McItem], loglik: Sequence[Sequence[float]]) -> dict[str, float | int]:
    """acc and acc_norm over questions (groups), and the chance level of guessing."""
    right: dict[str, list[bool]] = {}
    right_norm: dict[str, list[bool]] = {}
    chance: dict[str, float] = {}
    for item, scores in zip(items, loglik):
        norm = [s / len(c) for s, c in zip(scores, item.choices)]
        right.setdefault(item.group, []).append(_argmax(scores) == item.label)
        right_norm.setdefault(item.group, []).append(_argmax(norm) == item.label)
        chance[item.group] = chance.get(item.group, 1.0) / len(item.choices)
    return {"acc": fmean(all(v) for v in right.values()), "acc_norm": fmean(all(v) for v in right_norm.values()),
            "n_items": len(items), "n_questions": len(right), "chance": fmean(chance.values())}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)   # ties: the first


def score_items(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerFast", items: Sequence[McItem],
                prompts: Sequence[str], max_length: int, batch_tokens: int, desc: str) -> list[list[float]]:
    """Log-likelihood of every choice of every item."""
    start = start_token_id(tokenizer)
    windows, owners = [], []
    for index, (item, prompt) in enumerate(zip(items, prompts)):
        for window in choice_windows(tokenizer, prompt, item.choices, start, max_length):
            windows.append(window)
            owners.append(index)
    nll = score_windows(model, windows, batch_tokens, desc)
    loglik: list[list[float]] = [[] for _ in items]
    for owner, value in zip(owners, nll):
        loglik[owner].append(-value)
    return loglik


def run_mc(cfg: McEvalConfig) -> list[EvalResult]:
    sets = []
    for task in cfg.task:
        drops = DropLog(strict=cfg.strict)
        sets.append(EvalSet(task, task.name, Path(task.path), (load_items(task.format, str(task.path), cfg.limit, drops),
                                                               drops)))

    def measure(loaded: LoadedModel, data: EvalSet[tuple[list[McItem], DropLog]]) -> Measured:
        items, drops = data.items
        prompts = prompts_with_shots(items, cfg.num_fewshot, cfg.fewshot_separator, cfg.seed)
        loglik = score_items(loaded.model, loaded.tokenizer, items, prompts, cfg.max_length, cfg.batch_tokens,
                             desc=f"mc {loaded.name} {data.name}")
        metrics = {**accuracy(items, loglik), "skipped": drops.total, "num_fewshot": cfg.num_fewshot}
        print(f"{loaded.name} {data.name}: acc {metrics['acc']:.4f}  acc_norm {metrics['acc_norm']:.4f}  "
              f"({metrics['n_questions']} questions, {drops.total} skipped)")
        return metrics, {"skipped_reasons": drops.to_json()}

    return run_pairs("mc", cfg, sets, measure,
                     lambda spec: load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed),
                     axes=("model", "task"))

"""Adapters from the shared Russian evaluation sets to the generic multiple-choice schema
{"context", "choices", "label"} (plus "group" where several items make one question).

The prompt wording follows each set's own language (these sets are Russian), as MERA's
prompts do; the generic `mc` code knows no language. Labels are the crowd majority
(`label_human_majority`), or RuCoLA's `acceptable`. A label value the adapter does not know
becomes -1, which the generic validation skips and counts as out of range.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator

from lingraft.data_prep.readers import iter_json_lines
from lingraft.errors import LingraftError

Record = dict[str, Any]
NO_YES = [" Нет", " Да"]
FALSE_TRUE = {"false": 0, "true": 1}


def _get(record: Record, where: str, *fields: str) -> list[Any]:
    missing = [f for f in fields if f not in record]
    if missing:
        raise LingraftError(f"{where}: missing field {missing[0]!r} (has: {', '.join(record)}); wrong --task format?")
    return [record[f] for f in fields]


def parus(record: Record, where: str) -> list[Record]:
    """Cause or effect, with both options listed; asked in both orders, one group: the question
    counts as right only if both orders are right (as in the LEP paper)."""
    premise, question, a, b, label = _get(record, where, "premise", "question", "sent1", "sent2",
                                          "label_human_majority")
    label = {"0": 0, "1": 1}.get(str(label), -1)
    items = []
    for first, second, gold in ((a, b, label), (b, a, 1 - label if label >= 0 else -1)):
        items.append({"context": f"{premise} {question}\n1) {first}\n2) {second}\nОтвет:",
                      "choices": [f" {first}", f" {second}"], "label": gold, "group": where})
    return items


def rcb(record: Record, where: str) -> list[Record]:
    """NLI: 1 entailment, 2 contradiction, 3 neutral (MERA's coding)."""
    premise, hypothesis, label = _get(record, where, "premise", "hypothesis", "label_human_majority")
    return [{"context": f"{premise}\nВопрос: следует ли из этого, что «{hypothesis}»? Да, нет или может быть?\nОтвет:",
             "choices": [" Да", " Нет", " Может быть"], "label": {"1": 0, "2": 1, "3": 2}.get(str(label), -1)}]


def rwsd(record: Record, where: str) -> list[Record]:
    text, word, pronoun, label = _get(record, where, "text", "word", "pronoun", "label_human_majority")
    return [{"context": f"{text}\nВопрос: в этом тексте «{pronoun}» относится к «{word}»?\nОтвет:",
             "choices": NO_YES, "label": FALSE_TRUE.get(str(label).lower(), -1)}]


def russe(record: Record, where: str) -> list[Record]:
    word, first, second, label = _get(record, where, "word", "sentence1", "sentence2", "label_human_majority")
    return [{"context": f"Предложение 1: {first}\nПредложение 2: {second}\n"
                        f"Вопрос: слово «{word}» употреблено в обоих предложениях в одном значении?\nОтвет:",
             "choices": NO_YES, "label": FALSE_TRUE.get(str(label).lower(), -1)}]


def rucola(record: Record, where: str) -> list[Record]:
    sentence, acceptable = _get(record, where, "sentence", "acceptable")
    return [{"context": f"{sentence}\nВопрос: это предложение грамматически правильно?\nОтвет:",
             "choices": NO_YES, "label": {"0": 0, "1": 1}.get(str(acceptable).strip(), -1)}]


def generic(record: Record, where: str) -> list[Record]:
    return [record]


ADAPTERS: dict[str, Callable[[Record, str], list[Record]]] = {
    "generic": generic, "parus": parus, "rcb": rcb, "rwsd": rwsd, "russe": russe, "rucola": rucola}


def _csv_records(path: str) -> Iterator[tuple[str, Record]]:
    if not Path(path).is_file():
        raise LingraftError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            yield f"{path}:{lineno}", row


def source_records(fmt: str, path: str) -> Iterator[tuple[str, Record]]:
    """(where, generic record) for every item of `path` read as `fmt`."""
    if fmt not in ADAPTERS:
        raise LingraftError(f"unknown task format {fmt!r}; known: {', '.join(ADAPTERS)}")
    rows = _csv_records(path) if path.endswith(".csv") else iter_json_lines(path)
    for where, record in rows:
        if not isinstance(record, dict):
            raise LingraftError(f"{where}: a record must be a JSON object")
        for item in ADAPTERS[fmt](record, where):
            yield where, item

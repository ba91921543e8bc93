"""Which generated answers are fit to train on: pure checks, an optional judge, and drop counting.

Each check returns a drop reason or None. `filter_answers` applies them in a fixed order
(the first failing check names the reason), then the judge on the survivors, and reports
every dropped record to a `DropLog` so the manifest says how many went and why.
"""
from __future__ import annotations

import importlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lingraft.data_prep.records import DropLog
from lingraft.errors import LingraftError
from lingraft.propagate.calibrate.config import JudgeConfig, LoopFilter, ScriptFilter

_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_WORD = re.compile(r"\w+")

Judge = Callable[[list[str], list[str]], Sequence[float]]


# -- pure checks ---------------------------------------------------------------------------------
def repeated_ngram_share(text: str, n: int) -> float:
    """Share of the word n-grams of `text` that already occurred earlier in it (0 for < n words).

    A looping answer repeats a phrase over and over, so most of its n-grams are repeats;
    ordinary prose, lists included, repeats few 6-grams."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class ScriptMatcher:
    """Tells whether a letter belongs to the configured scripts (Unicode name prefixes) or ranges."""
    scripts: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, scripts: Sequence[str], ranges: Sequence[str]) -> "ScriptMatcher":
        spans = tuple((int(lo, 16), int(hi, 16)) for lo, hi in (r.split("-") for r in ranges))
        return cls(tuple(s.upper() for s in scripts), spans)

    def __call__(self, ch: str) -> bool:
        code = ord(ch)
        if any(lo <= code <= hi for lo, hi in self.ranges):
            return True
        return unicodedata.name(ch, "").startswith(self.scripts) if self.scripts else False


def script_share(text: str, matcher: ScriptMatcher, ignore_code_blocks: bool) -> tuple[float, int]:
    """(share of letters in the script, number of letters), fenced code blocks left out if asked."""
    if ignore_code_blocks:
        text = _CODE_BLOCK.sub(" ", text)
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0, 0
    return sum(map(matcher, letters)) / len(letters), len(letters)


def check_answer(answer: str, stopped: bool, script: ScriptFilter, matcher: ScriptMatcher,
                 loop: LoopFilter) -> str | None:
    """The reason to drop one answer, or None to keep it. `stopped`: it ended with a stop token."""
    if not answer.strip():
        return "empty"
    if not stopped:
        return "truncated"      # ran into max_new_tokens: the answer is cut off mid-way
    if loop.enabled and repeated_ngram_share(answer, loop.ngram) > loop.max_repeated_share:
        return "looping"
    if script.enabled:
        share, letters = script_share(answer, matcher, script.ignore_code_blocks)
        if letters >= script.min_letters and share < script.min_share:
            return "wrong_script"
    return None


# -- judge ---------------------------------------------------------------------------------------
def load_judge(spec: str) -> Judge:
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LingraftError(f"judge.function: cannot import {module_name!r} ({exc})") from None
    judge = getattr(module, name, None)
    if not callable(judge):
        raise LingraftError(f"judge.function: {module_name!r} has no callable {name!r}")
    return judge


def judge_scores(judge: Judge, prompts: list[str], answers: list[str], batch_size: int) -> list[float]:
    """The judge's score per (prompt, answer), checked to be one finite number each."""
    scores: list[float] = []
    for at in range(0, len(prompts), batch_size):
        got = list(judge(prompts[at:at + batch_size], answers[at:at + batch_size]))
        want = len(prompts[at:at + batch_size])
        if len(got) != want:
            raise LingraftError(f"judge returned {len(got)} scores for {want} answers")
        for s in got:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s:
                raise LingraftError(f"judge returned {s!r}; expected a number per answer")
        scores.extend(float(s) for s in got)
    return scores


# -- the whole filter ----------------------------------------------------------------------------
def filter_answers(records: list[dict[str, Any]], script: ScriptFilter, scripts: Sequence[str], loop: LoopFilter,
                   judge_cfg: JudgeConfig, drops: DropLog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, rejected) generation records; rejected ones get a `drop_reason`, judged ones a `judge_score`."""
    matcher = ScriptMatcher.build(scripts, script.ranges)
    survivors, rejected = [], []
    for rec in records:
        reason = check_answer(rec["answer"], rec["stopped"], script, matcher, loop)
        if reason is None:
            survivors.append(rec)
        else:
            rejected.append(_reject(rec, reason, drops))
    if judge_cfg.function is None or not survivors:
        return survivors, rejected
    scores = judge_scores(load_judge(judge_cfg.function), [r["prompt"] for r in survivors],
                          [r["answer"] for r in survivors], judge_cfg.batch_size)
    kept = []
    for rec, score in zip(survivors, scores):
        rec = {**rec, "judge_score": score}
        if score >= judge_cfg.threshold:
            kept.append(rec)
        else:
            rejected.append(_reject(rec, "judge_below_threshold", drops))
    return kept, rejected


def _reject(rec: dict[str, Any], reason: str, drops: DropLog) -> dict[str, Any]:
    drops.drop(reason, rec["id"], rec["answer"])
    return {**rec, "drop_reason": reason}

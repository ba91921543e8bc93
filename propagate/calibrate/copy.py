"""Copy tasks: corpus passages turned into "repeat this text" chats (LEP self-calibration);
replay: corpus passages kept as plain text.

Answering its own prompts teaches the propagated model to produce the instruct model's
answers in the new tokenization; copy tasks add plain text of the new language, so the
model also learns to reproduce arbitrary text token for token through the new vocabulary.
The phrasings come from the config (the language preset by default), never from this code.
Replay passages are trained on as text: learning to copy moves the body, and the
cross-entropy on text of the languages it already reads keeps their predictions in place.
"""
from __future__ import annotations

import random
from itertools import islice
from typing import Any, Collection

from lingraft.data_prep.readers import iter_texts
from lingraft.data_prep.records import DropLog
from lingraft.evaluation.copy_task import paragraphs_of
from lingraft.errors import LingraftError
from lingraft.propagate.calibrate.config import PassageConfig


def sample_passages(cfg: PassageConfig, seed: int, drops: DropLog, exclude: Collection[str] = ()) -> list[str]:
    """Up to `cfg.count` distinct paragraph-sized passages not in `exclude`, drawn uniformly (reservoir
    sampling) from the first `cfg.max_candidates` passages of the corpus, returned in corpus order."""
    assert cfg.corpus is not None
    rng = random.Random(seed)
    candidates = paragraphs_of(iter_texts(cfg.corpus, cfg.text_field, drops=drops), cfg.min_chars, cfg.max_chars)
    seen: set[str] = set()
    excluded = set(exclude)   # a membership test per candidate, up to max_candidates of them
    reservoir: list[tuple[int, str]] = []
    for index, passage in enumerate(islice(candidates, cfg.max_candidates)):
        if passage in seen or passage in excluded:
            continue
        seen.add(passage)
        if len(reservoir) < cfg.count:
            reservoir.append((index, passage))
        else:
            slot = rng.randrange(len(seen))
            if slot < cfg.count:
                reservoir[slot] = (index, passage)
    if not reservoir:
        raise LingraftError(f"{cfg.corpus}: no passages of {cfg.min_chars}-{cfg.max_chars} characters "
                            f"in field {cfg.text_field!r} ({cfg.setting})"
                            + (f", besides the {len(exclude)} excluded" if exclude else ""))
    return [passage for _, passage in sorted(reservoir)]


def copy_examples(passages: list[str], phrasings: list[str], seed: int) -> list[dict[str, Any]]:
    """One chat per passage: a randomly chosen phrasing asks to repeat it, the answer is the passage."""
    rng = random.Random(seed)
    return [{"id": f"copy:{i}", "source": "copy",
             "messages": [{"role": "user", "content": rng.choice(phrasings).replace("{text}", text)},
                          {"role": "assistant", "content": text}]}
            for i, text in enumerate(passages)]


def replay_examples(passages: list[str]) -> list[dict[str, Any]]:
    """One plain-text record per passage (`prep sft --text-field text` packs it as a document, every
    token of it a target)."""
    return [{"id": f"replay:{i}", "source": "replay", "text": text} for i, text in enumerate(passages)]

"""Instruction prompts for self-calibration: reading them from files, and fitting them to the context.

Prompt files are JSONL (optionally compressed) or one JSON array of objects. Each prompt gets
a stable id, `<source name>:<record id or number>`, which keys its answer in the resumable
generation file. Records without a usable prompt are counted in the `DropLog`, never skipped
silently.

Long prompts (the rule `fit_prompt` implements): when the chat-formatted prompt has more than
`max_prompt_tokens` tokens, the user message keeps its *first* tokens, as many as fit beside
the chat template, decoded back to text. The model answers the shortened message, and the
calibration example holds that same shortened message, so prompt and answer still agree.
With `long_prompts: drop` such prompts are dropped instead. Either way they are counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lingraft.data_prep.readers import iter_json_lines, open_binary
from lingraft.data_prep.records import MISSING, DropLog, field_value
from lingraft.evaluation.generation import chat_prompt_ids
from lingraft.errors import LingraftError
from lingraft.propagate.calibrate.config import PromptSourceConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

@dataclass(frozen=True)
class Prompt:
    id: str
    source: str
    text: str
    where: str        # file:line or file[index], for messages


def read_records(path: str, drops: DropLog) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSONL file or a JSON array file."""
    if not Path(path).is_file():
        raise LingraftError(f"{path}: no such prompt file")
    if _is_json_array(path):
        with open_binary(path) as fh:
            data = fh.read()
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LingraftError(f"{path}: invalid JSON array ({exc})") from None
        for index, record in enumerate(records):
            yield f"{path}[{index}]", record
        return
    yield from iter_json_lines(path, drops)


def _is_json_array(path: str) -> bool:
    """Whether the file's first non-blank character is "[", read without decompressing the
    whole file (a JSONL file is then streamed line by line, not held in memory twice)."""
    with open_binary(path) as fh:
        head = fh.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
        while not head:
            chunk = fh.read(1 << 16)
            if not chunk:
                return False
            head = chunk.lstrip()
    return head.startswith(b"[")


def load_prompts(sources: list[PromptSourceConfig], drops: DropLog) -> list[Prompt]:
    """Every usable prompt of every source, in file order; ids are unique."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for src in sources:
        taken = 0
        for number, (where, record) in enumerate(read_records(src.path, drops)):
            if src.limit is not None and taken >= src.limit:
                break
            text = field_value(record, src.prompt_field)
            if text is MISSING:
                drops.drop("prompt_missing_field", where, record)
                continue
            if not isinstance(text, str):
                drops.drop("prompt_not_a_string", where, record)
                continue
            extra = field_value(record, src.input_field) if src.input_field else MISSING
            if isinstance(extra, str) and extra.strip():
                text = f"{text.rstrip()}\n\n{extra.strip()}"
            if not text.strip():
                drops.drop("prompt_empty", where, record)
                continue
            key = field_value(record, src.id_field) if src.id_field else number
            if key is MISSING or isinstance(key, (dict, list)):
                drops.drop("prompt_missing_id", where, record)
                continue
            pid = f"{src.name}:{key}"
            if pid in seen:
                drops.drop("prompt_duplicate_id", where, pid)
                continue
            seen.add(pid)
            prompts.append(Prompt(id=pid, source=src.name, text=text.strip(), where=where))
            taken += 1
    if not prompts:
        raise LingraftError("no usable prompts in " + ", ".join(str(s.path) for s in sources))
    return prompts


def fit_prompt(tokenizer: "PreTrainedTokenizerFast", text: str, max_tokens: int) -> tuple[list[int], str, bool]:
    """(chat prompt ids, user message, whether it was shortened) under the rule in the module docstring."""
    ids = chat_prompt_ids(tokenizer, text)
    if len(ids) <= max_tokens:
        return ids, text, False
    message = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(message) - (len(ids) - max_tokens)
    while keep > 0:
        # A cut inside a multi-byte character decodes to U+FFFD; it is no part of the text.
        short = tokenizer.decode(message[:keep]).rstrip("\ufffd")
        ids = chat_prompt_ids(tokenizer, short)
        if len(ids) <= max_tokens:
            return ids, short, True
        keep -= max(1, len(ids) - max_tokens)   # decoding and re-encoding can merge differently
    raise LingraftError(f"generation.max_prompt_tokens={max_tokens} leaves no room for a message "
                        f"beside the chat template ({len(chat_prompt_ids(tokenizer, ''))} tokens)")

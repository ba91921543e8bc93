"""`lingraft prep alpaca`: Alpaca-style task JSONL -> chat `messages` JSONL for `lingraft prep sft`.

A task record holds an instruction and a list of instances ({input, output}); every instance
becomes one two-message chat (`data_prep.chat.alpaca_messages`). The field names are options, so
a translated set that keeps the originals beside the translation (the RuLM seed tasks:
`instruction`/`instances` in Russian, `orig_instruction`/`orig_instances` in English) yields
either language. Light module: only the standard library at import time.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingraft.config import OutputPath

CHATS_FILE = "chats.jsonl"


@dataclass
class AlpacaConvertConfig:
    """Turn Alpaca-style (instruction, instances) records into chat `messages` JSONL."""

    input: Path = field(metadata={"help": "task JSONL (.gz/.xz/.zst/.bz2 ok), one task per line"})
    out: OutputPath = field(metadata={"help": f"output folder: {CHATS_FILE} and manifest.json"})
    instruction_field: str = field(default="instruction", metadata={"help": "the task's instruction"})
    instances_field: str = field(default="instances", metadata={"help": "the list of {input, output} instances"})
    input_field: str = field(default="input", metadata={"help": "an instance's input (may be empty)"})
    output_field: str = field(default="output", metadata={"help": "an instance's answer"})
    strict: bool = field(default=False, metadata={"help": "stop at the first unusable task instead of skipping it"})


def task_chats(task: Any, cfg: AlpacaConvertConfig) -> list[list[dict[str, str]]] | str:
    """The chats of one task, or the reason it is unusable."""
    from lingraft.data_prep.chat import alpaca_messages
    if not isinstance(task, dict):
        return "not_an_object"
    instruction, instances = task.get(cfg.instruction_field), task.get(cfg.instances_field)
    if not isinstance(instruction, str) or not instruction.strip():
        return "missing_instruction"
    if not isinstance(instances, list) or not instances:
        return "missing_instances"
    chats = []
    for inst in instances:
        output = inst.get(cfg.output_field) if isinstance(inst, dict) else None
        extra = inst.get(cfg.input_field) or "" if isinstance(inst, dict) else ""
        if not isinstance(output, str) or not output.strip() or not isinstance(extra, str):
            return "bad_instance"
        chats.append(alpaca_messages(instruction, extra, output))
    return chats


def run_alpaca_convert(cfg: AlpacaConvertConfig) -> Path:
    from lingraft.data_prep.readers import iter_json_lines
    from lingraft.data_prep.records import DropLog
    from lingraft.atomic import atomic_dir
    from lingraft.errors import LingraftError
    from lingraft.log import get_logger
    from lingraft.manifest import new_manifest

    started = time.perf_counter()
    drops = DropLog(strict=cfg.strict)
    tasks = chats = 0
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        with open(tmp / CHATS_FILE, "w", encoding="utf-8") as fh:
            for where, task in iter_json_lines(cfg.input, drops):
                result = task_chats(task, cfg)
                if isinstance(result, str):
                    drops.drop(result, where, json.dumps(task, ensure_ascii=False)[:200])
                    continue
                tasks += 1
                chats += len(result)
                fh.writelines(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in result)
        if not chats:
            raise LingraftError(f"prep alpaca: no usable task in {cfg.input} (skipped: {dict(drops.counts)})")
        manifest = new_manifest("prep alpaca", cfg, inputs={"input": cfg.input})
        manifest.outputs = {"chats": CHATS_FILE}
        manifest.metrics = {"tasks": tasks, "chats": chats, "skipped": drops.to_json(),
                            "seconds": round(time.perf_counter() - started, 3)}
        manifest.write(tmp)
    get_logger(__name__).info("prep alpaca: %d tasks -> %d chats in %s (skipped %d)", tasks, chats, out, drops.total)
    return out

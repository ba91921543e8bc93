"""Greedy answers of the instruct model, written resumably to `generations.jsonl`.

Durability: prompts are planned into fixed batches (sorted by length, so a batch pads
little). After each batch its records are appended and fsync'ed. A restart keeps the
batches that are complete in the file, cuts off anything after the last one (a torn last
line, or the first records of a batch the kill interrupted) and generates the remaining
batches, each with exactly the members it would have had in an uninterrupted run, so
every prompt is answered exactly once and batch-dependent padding never changes an answer.
Every record carries the generation parameters; a restart with other parameters, another
prompt set or another batch size is refused rather than mixed into the same file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from lingraft.data_prep.records import DropLog
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_text
from lingraft.log import get_logger, progress
from lingraft.propagate.calibrate.config import GenerationSettings
from lingraft.propagate.calibrate.prompts import Prompt, fit_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)
GENERATIONS = "generations.jsonl"


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    stopped: bool     # ended at a stop token; False: cut at max_new_tokens


@dataclass(frozen=True)
class FittedPrompt:
    prompt: Prompt
    text: str         # the user message the model answers (shortened if it was too long)
    ids: list[int]    # its chat-formatted token ids
    truncated: bool


class Backend(Protocol):
    def answer(self, prompts: list[list[int]], max_new_tokens: int) -> list[Answer]: ...


class HFBackend:
    """`transformers` generate, through evaluation.generation's batched greedy decoding."""

    def __init__(self, folder: Path, settings: GenerationSettings, seed: int) -> None:
        from lingraft.evaluation.models import load_model
        self.loaded = load_model(str(folder), settings.dtype, settings.device, settings.trust_remote_code, seed)

    def answer(self, prompts: list[list[int]], max_new_tokens: int) -> list[Answer]:
        from lingraft.evaluation.generation import generate_greedy
        gens = generate_greedy(self.loaded.model, self.loaded.tokenizer, prompts, max_new_tokens,
                               batch_size=len(prompts), desc="batch")
        return [Answer(g.text, g.tokens, g.stopped) for g in gens]


class VLLMBackend:
    """vLLM offline inference, fed the same token ids the HF backend would get."""

    def __init__(self, folder: Path, settings: GenerationSettings, seed: int) -> None:
        from vllm import LLM
        self.llm = LLM(model=str(folder), dtype=settings.dtype, seed=seed,
                       tensor_parallel_size=settings.tensor_parallel_size,
                       trust_remote_code=settings.trust_remote_code)

    def answer(self, prompts: list[list[int]], max_new_tokens: int) -> list[Answer]:
        from vllm import SamplingParams
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [Answer(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop")
                for o in outs]


def backend_name(settings: GenerationSettings) -> str:
    """The backend `auto` means here: vLLM when importable, else HF."""
    if settings.backend != "auto":
        return settings.backend
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "hf"
    return "vllm"


def open_backend(name: str, folder: Path, settings: GenerationSettings, seed: int) -> Backend:
    return (VLLMBackend if name == "vllm" else HFBackend)(folder, settings, seed)


def model_context(folder: Path, trust_remote_code: bool) -> int | None:
    """The model's context length (max_position_embeddings), read from its config alone."""
    from lingraft.propagate.lep.compat import load_config
    return getattr(load_config(str(folder), trust_remote_code), "max_position_embeddings", None)


def prompt_budget(settings: GenerationSettings, context_tokens: int | None) -> int:
    """Prompt tokens allowed: max_prompt_tokens, else the model's context minus max_new_tokens."""
    if settings.max_prompt_tokens is not None:
        return settings.max_prompt_tokens
    if context_tokens is None:
        raise LingraftError("the model's config names no context length; set generation.max_prompt_tokens")
    budget = context_tokens - settings.max_new_tokens
    if budget < 1:
        raise LingraftError(f"generation.max_new_tokens={settings.max_new_tokens} leaves no room for a prompt "
                            f"in the model's context of {context_tokens} tokens")
    return budget


def fit_prompts(prompts: list[Prompt], tokenizer: "PreTrainedTokenizerFast", budget: int,
                long_prompts: str, drops: DropLog) -> tuple[list[FittedPrompt], int]:
    """Chat-formatted prompts within `budget` tokens, and how many were shortened (see calibrate_prompts)."""
    fitted, truncated = [], 0
    for p in progress(prompts, desc="tokenizing prompts", unit="prompt"):
        ids, text, cut = fit_prompt(tokenizer, p.text, budget)
        if cut and long_prompts == "drop":
            drops.drop("prompt_too_long", p.where, p.text)
            continue
        truncated += cut
        fitted.append(FittedPrompt(p, text, ids, cut))
    if not fitted:
        raise LingraftError(f"every prompt is longer than {budget} tokens (long_prompts: drop)")
    return fitted, truncated


def plan_batches(fitted: list[FittedPrompt], batch_size: int) -> list[list[FittedPrompt]]:
    """Fixed batches of similar prompt length (ties keep input order): the same on every restart."""
    order = sorted(fitted, key=lambda f: len(f.ids))
    return [order[at:at + batch_size] for at in range(0, len(order), batch_size)]


def prompts_fingerprint(fitted: list[FittedPrompt]) -> str:
    return sha256_text(json.dumps([[f.prompt.id, f.ids] for f in fitted]))


def read_finished(path: Path, params: dict[str, Any], plan: list[list[FittedPrompt]]) -> dict[int, list[dict]]:
    """{batch: records} of the complete batches in `path`, which is cut after the last of them."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    done: dict[int, list[dict]] = {}
    current: list[dict] = []
    kept_bytes = offset = 0
    for raw in data.split(b"\n")[:-1]:      # the piece after the last newline is torn (or empty)
        offset += len(raw) + 1
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            raise LingraftError(f"{path}: corrupt line at byte {offset - len(raw) - 1}; "
                                "not a torn tail, so the file was edited or damaged") from None
        if rec.get("params") != params:
            raise LingraftError(f"{path}: written with other generation parameters or prompts "
                                f"({rec.get('params')} != {params}); use another out folder or delete the file")
        batch = rec.get("batch")
        if not isinstance(batch, int) or not 0 <= batch < len(plan):
            raise LingraftError(f"{path}: record {rec.get('id')!r} names batch {batch!r}, not one of the plan's")
        if current and current[0]["batch"] != batch:
            raise LingraftError(f"{path}: batch {current[0]['batch']} is incomplete yet followed by batch {batch}")
        current.append(rec)
        want = {f.prompt.id for f in plan[batch]}
        if len(current) == len(want) and {r["id"] for r in current} == want:
            done[batch], current = current, []
            kept_bytes = offset
    if kept_bytes < len(data):
        log.warning("%s: discarding %d bytes after the last complete batch (%d records of an interrupted "
                    "batch, a torn line or both); that batch is generated again", path, len(data) - kept_bytes,
                    len(current))
        with open(path, "rb+") as fh:
            fh.truncate(kept_bytes)
            os.fsync(fh.fileno())
    return done


def record(f: FittedPrompt, batch: int, answer: Answer, params: dict[str, Any]) -> dict[str, Any]:
    return {"id": f.prompt.id, "source": f.prompt.source, "batch": batch, "prompt": f.text,
            "prompt_tokens": len(f.ids), "prompt_truncated": f.truncated, "answer": answer.text,
            "answer_tokens": answer.tokens, "stopped": answer.stopped, "params": params}


@dataclass
class GenerationRun:
    records: list[dict[str, Any]]     # one per prompt, in plan order
    batches: int
    batches_resumed: int              # found complete in the file
    new_tokens: int = 0               # answer tokens generated by this run
    seconds: float = 0.0              # generation time of this run, model loading excluded


def generate_resumable(fitted: list[FittedPrompt], open_model: Callable[[], Backend], path: Path,
                       params: dict[str, Any], batch_size: int, max_new_tokens: int) -> GenerationRun:
    """Answers to every prompt, generating only the batches `path` does not hold yet
    (the model is loaded only when some are left)."""
    plan = plan_batches(fitted, batch_size)
    done = read_finished(path, params, plan)
    run = GenerationRun([], len(plan), len(done))
    todo = [b for b in range(len(plan)) if b not in done]
    log.info("generation: %d prompts in %d batches, %d found done in %s", len(fitted), len(plan), len(done), path)
    if todo:
        backend = open_model()
        started = time.perf_counter()
        with open(path, "ab") as fh:
            for b in progress(todo, desc="calibration answers", unit="batch"):
                answers = backend.answer([f.ids for f in plan[b]], max_new_tokens)
                done[b] = [record(f, b, a, params) for f, a in zip(plan[b], answers)]
                fh.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in done[b]))
                fh.flush()
                os.fsync(fh.fileno())   # the batch is durable before the next one starts
                run.new_tokens += sum(a.tokens for a in answers)
        run.seconds = time.perf_counter() - started
        log.info("generated %d answer tokens in %.1f s (%.1f tokens/s)", run.new_tokens, run.seconds,
                 run.new_tokens / max(run.seconds, 1e-9))
    run.records = [r for b in range(len(plan)) for r in done[b]]
    return run

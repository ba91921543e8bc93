"""Batched greedy generation through the model's chat template (copy and speed tasks)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from lingraft.errors import LingraftError
from lingraft.log import progress

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class Generation:
    text: str            # the decoded answer, special tokens removed
    tokens: int          # generated tokens, the stop token included
    stopped: bool = False   # ended at a stop token (False: cut at its max_new_tokens)


def chat_prompt_ids(tokenizer: "PreTrainedTokenizerFast", user_message: str) -> list[int]:
    """The token ids of a one-turn chat ending where the assistant's answer starts."""
    if not tokenizer.chat_template:
        raise LingraftError("the model's tokenizer has no chat template (needed to ask it to copy or answer)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                         add_generation_prompt=True)
    # The template writes any BOS itself; encoding must not add a second one.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerFast") -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise LingraftError("the model has no EOS token to stop generation at")
    return ids


@torch.no_grad()
def generate_greedy(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerFast", prompts: Sequence[list[int]],
                    max_new_tokens: Sequence[int] | int, batch_size: int = 8, ignore_eos: bool = False,
                    desc: str = "generating") -> list[Generation]:
    """Greedy answers to `prompts` (token ids), batched by length with left padding, in input order.

    A batch runs to the longest `max_new_tokens` of its members; each answer is then cut at its
    own limit and first stop token, so which prompts share a batch changes no answer's length
    limit (padding can still move logits by rounding error). With
    `ignore_eos` the stop tokens are suppressed (min_new_tokens) so every answer has its full length."""
    caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for at in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = order[at:at + batch_size]
        width = max(len(prompts[i]) for i in batch)
        inputs = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            inputs[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        limit = max(caps[i] for i in batch)
        out = model.generate(input_ids=inputs.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=limit, min_new_tokens=limit if ignore_eos else 0,
                             eos_token_id=stops, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(batch):
            new = out[row, width:width + caps[i]].tolist()
            cut = None if ignore_eos else next((k for k, t in enumerate(new) if t in stops), None)
            new = new if cut is None else new[:cut + 1]
            results[i] = Generation(tokenizer.decode(new, skip_special_tokens=True), len(new), cut is not None)
    return results  # type: ignore[return-value]


def timed_generate(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerFast", prompts: Sequence[list[int]],
                   max_new_tokens: int, batch_size: int, ignore_eos: bool) -> tuple[list[Generation], float]:
    """`generate_greedy` with wall-clock seconds (CUDA work finished before the clock stops)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, ignore_eos, desc="timing")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return gens, time.perf_counter() - start

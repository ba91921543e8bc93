"""Chat conversations -> token ids and an assistant-only loss mask, through the model's chat template.

Which tokens are the assistant's is found by rendering prefixes of the conversation and
diffing them (works with any Jinja chat template; `{% generation %}` markers, which
`return_assistant_tokens_mask` needs, are missing from most templates):

  before  = render(messages[:i], add_generation_prompt=True)   ends with "<assistant header>"
  through = render(messages[:i + 1])                           ends with "<answer><end of turn>..."

The answer span starts where `through` stops agreeing with `before` and ends right after
the last special token the template put in the turn (the end-of-turn token: `<|im_end|>`,
`<|eot_id|>`, `</s>`...), so the model learns to stop, while formatting after it (a newline)
is context. Without a special token the span ends at the turn's last non-space character.
The full conversation is tokenized once and a token is a target when its first character
lies in a span, so ids are exactly those of the rendered text.

Truncation rule, for a conversation longer than `max_tokens`:
  1. keep the longest run of whole exchanges that fits (later user/assistant turns are
     dropped: reason "turns");
  2. if not even the first exchange fits, its answer keeps min(answer, max_tokens // 2)
     tokens' worth of room; a prompt longer than the rest loses its middle: its first half
     (template header, system prompt, start of the request) and its last half (end of the
     request, assistant header) are kept ("prompt"); the answer is then cut on the right to
     the room left ("answer"): a cut answer has no end-of-turn token, so nothing teaches the
     model to stop there.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from lingraft.errors import LingraftError

ROLES = ("system", "user", "assistant")


class ChatError(LingraftError):
    """A conversation that cannot be trained on; `reason` is its drop-log category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class RenderedChat:
    ids: list[int]
    mask: list[int]                                   # 1 = training target (assistant answer + end of turn)
    truncated: list[str] = field(default_factory=list)  # rules applied: "turns", "prompt", "answer", "document"


def resolve_template(tokenizer: Any, chat_template: str | None = None) -> str:
    """The Jinja template to render with: the given one, else the tokenizer's own."""
    if chat_template is not None:
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):   # several named templates: the default one is the chat template
        own = own.get("default")
    if not own:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise LingraftError(f"tokenizer {name} has no chat template; give one (chat_template: a .jinja file)")
    return own


def validate_messages(messages: Any, special_tokens: Sequence[str] = ()) -> list[dict[str, str]]:
    """[system], user, assistant, user, assistant, ... with non-empty string contents; else ChatError."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("not_a_message_list", "expected a non-empty list of {role, content}")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatError("bad_message", f"message {i} is not a {{role, content}} object")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise ChatError("bad_role", f"message {i} has role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str) or not content.strip():
            raise ChatError("empty_content", f"message {i} ({role}) has no text content")
        hit = next((tok for tok in special_tokens if tok in content), None)
        if hit is not None:   # it would tokenize as the control token itself: a template injection
            raise ChatError("special_token_in_content", f"message {i} ({role}) contains {hit!r}")
        clean.append({"role": role, "content": content})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    roles = [m["role"] for m in turns]
    if not roles or roles != expected[:len(roles)] or roles[-1] != "assistant":
        raise ChatError("bad_order", f"roles {roles} (expected [system], user, assistant, user, ..., assistant)")
    return clean


def _render(tokenizer: Any, template: str, messages: list[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as exc:   # e.g. a template's own raise_exception("roles must alternate")
        raise ChatError("template_error", str(exc)) from None
    return text if isinstance(text, str) else text[0]


def special_tokens(tokenizer: Any) -> list[str]:
    """Texts of the tokenizer's special (control) tokens, longest first."""
    tokens = {tok.content for tok in getattr(tokenizer, "added_tokens_decoder", {}).values() if tok.special}
    tokens |= set(getattr(tokenizer, "all_special_tokens", []))
    tokens.discard("")
    return sorted(tokens, key=len, reverse=True)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans(tokenizer: Any, template: str, messages: list[dict],
                    specials: Sequence[str]) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and, per assistant turn, (answer start, answer end, turn end)
    as character offsets (answer end includes the end-of-turn token; turn end is where the
    next message's text begins)."""
    full = _render(tokenizer, template, messages, generation_prompt=False)
    special = re.compile("|".join(map(re.escape, specials))) if specials else None
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        plain = _render(tokenizer, template, messages[:i], generation_prompt=False)
        before = _render(tokenizer, template, messages[:i], generation_prompt=True)
        through = _render(tokenizer, template, messages[:i + 1], generation_prompt=False)
        start = _common_prefix(before, through)
        if not full.startswith(through) or start < len(plain) or not through.startswith(plain):
            raise ChatError("template_not_prefix_stable",
                            f"rendering the first {i + 1} messages is not a prefix of the whole conversation")
        turn = through[start:]
        ends = [m.end() for m in special.finditer(turn)] if special is not None else []
        end = start + (ends[-1] if ends else len(turn.rstrip()))
        if end <= start:
            raise ChatError("empty_answer", f"message {i} renders to no answer text")
        spans.append((start, end, len(through)))
    return full, spans


def _truncate(ids: list[int], mask: list[int], turn_ends: list[int], max_tokens: int) -> RenderedChat:
    """Apply the module's truncation rule (see the docstring) to one tokenized conversation."""
    fitting = [end for end in turn_ends if end <= max_tokens]
    if fitting:
        end = fitting[-1]
        return RenderedChat(ids[:end], mask[:end], ["turns"])
    prompt = mask.index(1)                       # the first exchange: prompt [0, prompt), answer after it
    answer = turn_ends[0] - prompt
    room_for_prompt = max_tokens - min(answer, max_tokens // 2)
    truncated = []
    keep = list(range(prompt))
    if prompt > room_for_prompt:
        tail = room_for_prompt // 2
        keep = keep[:room_for_prompt - tail] + keep[prompt - tail:]
        truncated.append("prompt")
    room = max_tokens - len(keep)
    if answer > room:
        truncated.append("answer")
    keep += range(prompt, prompt + min(answer, room))
    return RenderedChat([ids[k] for k in keep], [mask[k] for k in keep], truncated)


def encode_chat(tokenizer: Any, messages: Any, chat_template: str | None = None,
                max_tokens: int | None = None) -> RenderedChat:
    """Validate, render and tokenize one conversation; truncate it to `max_tokens` by the module's rule.
    Raises ChatError (with a drop reason) for conversations that cannot be used."""
    template = resolve_template(tokenizer, chat_template)
    specials = special_tokens(tokenizer)
    clean = validate_messages(messages, specials)
    text, spans = assistant_spans(tokenizer, template, clean, specials)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    starts = [start for start, _ in offsets]
    mask = [0] * len(ids)
    for answer_start, answer_end, _ in spans:
        for k in range(bisect.bisect_left(starts, answer_start), bisect.bisect_left(starts, answer_end)):
            mask[k] = 1
    if not any(mask):
        raise ChatError("no_target_tokens", "no token starts inside an assistant answer")
    if max_tokens is None or len(ids) <= max_tokens:
        return RenderedChat(ids, mask)
    turn_ends = [bisect.bisect_left(starts, turn_end) for _, _, turn_end in spans]
    return _truncate(ids, mask, turn_ends, max_tokens)


def encode_document(tokenizer: Any, text: Any, max_tokens: int | None = None) -> RenderedChat:
    """Plain text (replay: a language the model must not forget) as one packed document: the start
    token that `eval bpc` scores every document after (BOS, else EOS; context, not a target),
    then the text, every token of it a target, cut at `max_tokens` in all. Control tokens in
    the text are refused as in chat content."""
    if not isinstance(text, str):
        raise ChatError("bad_text", f"the text field holds {type(text).__name__}, not a string")
    if not text.strip():
        raise ChatError("empty_text", "the text field is empty")
    hit = next((tok for tok in special_tokens(tokenizer) if tok in text), None)
    if hit is not None:
        raise ChatError("special_token_in_content", f"the text contains {hit!r}")
    from lingraft.evaluation.bpc import start_token_id
    ids = [start_token_id(tokenizer), *tokenizer(text, add_special_tokens=False)["input_ids"]]
    cut = max_tokens is not None and len(ids) > max_tokens
    ids = ids[:max_tokens] if cut else ids
    return RenderedChat(ids, [0] + [1] * (len(ids) - 1), ["document"] if cut else [])


def render_chat(tokenizer: Any, messages: Any, chat_template: str | None = None,
                max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of one conversation: mask is 1 on the assistant answers and their end-of-turn token."""
    rendered = encode_chat(tokenizer, messages, chat_template, max_tokens)
    return rendered.ids, rendered.mask


def alpaca_messages(instruction: str, input: str, output: str) -> list[dict[str, str]]:
    """An Alpaca-style (instruction, input, output) task as a two-message chat: the input, when
    present, follows the instruction after a blank line, as in the Alpaca prompt."""
    request = instruction.strip() + (f"\n\n{input.strip()}" if input and input.strip() else "")
    return [{"role": "user", "content": request}, {"role": "assistant", "content": output.strip()}]

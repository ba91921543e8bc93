"""Bits per character (and per byte) of a causal LM on documents: a tokenizer-independent measure.

    bpc = (sum over every token of every document of -ln p(token | preceding tokens)) / ln 2 / characters
    bpb = the same sum / ln 2 / UTF-8 bytes

Each document is scored on its own, after one "start" token (BOS, else EOS) that is given,
not scored. A document longer than the model's window is scored with a sliding window:
window j scores the `stride` tokens after the first j*stride, and feeds the model up to
`max_length` tokens before each of them, so every token is scored exactly once with up to
`max_length` tokens of context. `stride == max_length` (the default) means no overlap: the
first token of each window sees only the one token before it. A smaller stride costs
max_length/stride times more compute and gives every token at least max_length-stride+1
tokens of context. Because the sums are divided by characters or bytes, models with
different tokenizers compare directly.

The same scorer (`score_windows`) serves multiple choice: a "window" is any token sequence
whose last `scored` tokens are to be scored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from lingraft.errors import LingraftError
from lingraft.log import progress

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BpcResult:
    nll_nats: float
    characters: int
    tokens: int
    documents: int
    utf8_bytes: int = 0

    @property
    def bits_per_character(self) -> float:
        return self.nll_nats / math.log(2) / self.characters

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / math.log(2) / self.utf8_bytes

    @property
    def characters_per_token(self) -> float:
        return self.characters / self.tokens

    def to_json(self) -> dict[str, float | int]:
        return {"bits_per_char": self.bits_per_character, "bits_per_byte": self.bits_per_byte,
                "n_chars": self.characters, "n_bytes": self.utf8_bytes, "n_tokens": self.tokens,
                "n_docs": self.documents, "chars_per_token": self.characters_per_token, "nll_nats": self.nll_nats}


@dataclass(frozen=True)
class Window:
    """Model input `tokens`; the predictions of its last `scored` tokens are summed."""
    tokens: list[int]
    scored: int


def start_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise LingraftError("scoring needs a BOS or EOS token to start each document")


def document_windows(ids: Sequence[int], start: int, max_length: int, stride: int | None = None) -> list[Window]:
    """Cover `ids` with windows that score each token once, with up to `max_length` tokens of context."""
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise LingraftError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    full = [start, *ids]                       # full[p] for p >= 1 is a token to score
    windows = []
    for first in range(1, len(full), stride):
        end = min(first + stride, len(full))
        # Measured from the unclipped end, so the windows do not depend on the document's
        # length (a short last window gets the same context as a full one would).
        begin = max(0, first + stride - 1 - max_length)
        windows.append(Window(full[begin:end], end - first))
    return windows


def batch_windows(windows: Sequence[Window], batch_tokens: int) -> list[list[int]]:
    """Indices of `windows`, grouped by length (little padding) into batches of at most
    `batch_tokens` padded tokens (a longer window gets a batch of its own)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].tokens))
    batches: list[list[int]] = [[]]
    for i in order:
        if batches[-1] and (len(batches[-1]) + 1) * len(windows[i].tokens) > batch_tokens:
            batches.append([])
        batches[-1].append(i)
    return [b for b in batches if b]


@torch.no_grad()
def score_windows(model: "PreTrainedModel", windows: Sequence[Window], batch_tokens: int = 2048,
                  desc: str | None = None) -> list[float]:
    """Sum of -ln p over the scored tokens of every window, in nats, in the order given."""
    model.eval()
    device = next(model.parameters()).device
    sums = [0.0] * len(windows)
    total = sum(w.scored for w in windows)
    with progress(total=total, unit="tok", unit_scale=True, desc=desc or "scoring") as bar:
        for batch in batch_windows(windows, batch_tokens):
            width = max(len(windows[i].tokens) for i in batch)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            scored = torch.zeros(len(batch), width, dtype=torch.bool)   # position t: predicting token t
            for row, i in enumerate(batch):
                w = windows[i]
                n = len(w.tokens)
                inputs[row, :n] = torch.tensor(w.tokens)
                mask[row, :n] = 1
                scored[row, n - w.scored:n] = True
            logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits[:, :-1]
            target = scored[:, 1:].to(device)
            # Only scored positions: (tokens, vocab) logits, upcast for a stable log-softmax.
            token_nll = torch.nn.functional.cross_entropy(logits[target].float(), inputs[:, 1:].to(device)[target],
                                                          reduction="none").double()
            per_row = torch.zeros(len(batch), dtype=torch.float64, device=device)
            per_row.index_add_(0, target.nonzero()[:, 0], token_nll)
            for row, i in enumerate(batch):
                sums[i] = float(per_row[row])
            bar.update(int(target.sum()))
    return sums


def bits_per_character(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", texts: Iterable[str],
                       max_length: int = 1024, batch_tokens: int = 2048, start_id: int | None = None,
                       stride: int | None = None, desc: str | None = None) -> BpcResult:
    """Score `texts` (each a document) with `model`; see the module docstring for the exact definition."""
    start = start_token_id(tokenizer) if start_id is None else start_id
    docs = [t for t in texts if t]
    if not docs:
        raise LingraftError("bits per character: no non-empty text to score")
    windows: list[Window] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        windows += document_windows(ids, start, max_length, stride)
    nll = math.fsum(score_windows(model, windows, batch_tokens, desc))
    return BpcResult(nll_nats=nll, characters=sum(map(len, docs)), tokens=sum(w.scored for w in windows),
                     documents=len(docs), utf8_bytes=sum(len(t.encode("utf-8")) for t in docs))

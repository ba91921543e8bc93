"""`lingraft prep sft`: chat JSONL -> packed shards whose loss mask selects the assistant answers.

With `text_field` set, a record without messages but with that field is a plain document
(replay text mixed into the chats): the start token, then the text, every token of it a
target (data_prep/chat.py: encode_document).

Every conversation is rendered with the model's chat template and truncated to at most
`seq_len` tokens (data_prep/chat.py), then conversations are packed into samples of
exactly `seq_len` tokens: best fit over a bounded set of open samples, so a conversation
never straddles two samples and none is seen twice. The room a sample has left is filled
by one filler document (the pad id, mask 0): with document masking it attends only to
itself, and without it nothing attends to it, since it comes last. Each sample is one
document-aligned sample of the packed format (`sample_start: document`), so the trainer,
`PackedDataset` and its checks are the same as for plain text.

Unusable chats (wrong roles or order, bad JSON, template errors) are skipped and counted
by reason in the manifest; `strict` stops at the first one instead.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lingraft.data_prep.chat import ChatError, RenderedChat, encode_chat, encode_document, resolve_template
from lingraft.data_prep.packed_format import ShardBuilder, packed_outputs, shard_name, token_dtype, write_done
from lingraft.data_prep.readers import iter_json_lines
from lingraft.data_prep.records import DropLog
from lingraft.data_prep.sft_config import SftPackConfig
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress

log = get_logger(__name__)

STAGE = "prep.sft"


def iter_examples(paths: list[str], messages_field: str, text_field: str | None, drops: DropLog,
                  max_records: int | None = None) -> Iterator[tuple[str, Any, str]]:
    """("chat", messages, "path:line") or ("text", text, "path:line") for every JSONL record: a record
    with `messages_field` is a chat, one with only `text_field` a plain document; others go to `drops`."""
    records = (rec for path in paths for rec in iter_json_lines(path, drops))
    for where, record in itertools.islice(records, max_records):
        if isinstance(record, dict) and messages_field in record:
            yield "chat", record[messages_field], where
        elif isinstance(record, dict) and text_field is not None and text_field in record:
            yield "text", record[text_field], where
        else:
            drops.drop("missing_field", where, json.dumps(record, ensure_ascii=False)[:80])


@dataclass
class Bin:
    room: int
    chats: list[RenderedChat] = field(default_factory=list)


class BinPacker:
    """Best-fit packing of conversations into samples of `capacity` tokens, at most
    `open_bins` samples open at once (the fullest is closed to make room)."""

    def __init__(self, capacity: int, open_bins: int) -> None:
        self.capacity, self.open_bins = capacity, open_bins
        self.bins: list[Bin] = []

    def add(self, chat: RenderedChat) -> list[Bin]:
        """Place `chat`; returns the samples closed on the way (to be written, in order)."""
        size = len(chat.ids)
        fits = [b for b in self.bins if b.room >= size]
        closed = []
        if fits:
            target = min(fits, key=lambda b: b.room)
        else:
            if len(self.bins) >= self.open_bins:
                fullest = min(self.bins, key=lambda b: b.room)
                self.bins.remove(fullest)
                closed.append(fullest)
            target = Bin(self.capacity)
            self.bins.append(target)
        target.chats.append(chat)
        target.room -= size
        if target.room == 0:
            self.bins.remove(target)
            closed.append(target)
        return closed

    def flush(self) -> list[Bin]:
        closed, self.bins = self.bins, []
        return closed


@dataclass
class Counts:
    chats: int = 0                     # conversations and plain documents
    documents: int = 0                 # of them, plain documents
    chat_tokens: int = 0
    target_tokens: int = 0
    filler_tokens: int = 0
    samples: int = 0
    truncated: dict[str, int] = field(default_factory=dict)


class ShardWriter:
    """Writes closed samples into shards of about `shard_tokens` tokens."""

    def __init__(self, out: Path, dtype: np.dtype, seq_len: int, pad_id: int, shard_tokens: int, source: str):
        self.out, self.dtype, self.seq_len, self.pad_id = out, dtype, seq_len, pad_id
        self.shard_tokens, self.source = shard_tokens, source
        self.records: list[dict[str, Any]] = []
        self.counts = Counts()
        self.builder: ShardBuilder | None = None

    def write_bin(self, sample: Bin) -> None:
        if self.builder is None:
            self.builder = ShardBuilder(self.dtype)
        for chat in sample.chats:
            self.builder.add(chat.ids, chat.mask, source=self.source)
            self.counts.chats += 1
            self.counts.chat_tokens += len(chat.ids)
            self.counts.target_tokens += sum(chat.mask)
        if sample.room:
            self._filler(sample.room)
        self.counts.samples += 1
        if self.builder.n_tokens >= self.shard_tokens:
            self.close_shard()

    def _filler(self, n: int) -> None:
        self.builder.add(np.full(n, self.pad_id, dtype=self.dtype), np.zeros(n, np.uint8), source="filler")
        self.counts.filler_tokens += n

    def close_shard(self) -> None:
        if self.builder is None:
            return
        # One trailing token completes the last sample's seq_len + 1 span (its last label, masked).
        self._filler(1)
        record = self.builder.write(self.out, shard_name(len(self.records)), self.seq_len, "document")
        expected = (self.builder.n_tokens - 1) // self.seq_len
        if record["samples"] != expected:   # every sample must be exactly one packed bin
            raise LingraftError(f"sft pack: shard holds {record['samples']} samples, expected {expected}")
        write_done(self.out, record)
        self.records.append(record)
        self.builder = None


def _pad_id(tok: Any) -> int:
    for token_id in (tok.pad_token_id, tok.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0   # masked and never attended to by real tokens: any valid id will do


def pack_chats(cfg: SftPackConfig, tok: Any, template: str, out: Path, drops: DropLog) -> ShardWriter:
    """Render, truncate and pack every usable chat of cfg.input into shards under `out`."""
    writer = ShardWriter(out, token_dtype(len(tok)), cfg.seq_len, _pad_id(tok), cfg.shard_tokens, "chat")
    packer = BinPacker(cfg.seq_len, cfg.open_bins)
    truncated = writer.counts.truncated
    with progress(total=cfg.max_records, desc="sft pack", unit="chat") as bar:
        for kind, content, where in iter_examples(cfg.input, cfg.messages_field, cfg.text_field, drops,
                                                  cfg.max_records):
            bar.update()
            try:
                chat = (encode_chat(tok, content, template, max_tokens=cfg.seq_len) if kind == "chat"
                        else encode_document(tok, content, max_tokens=cfg.seq_len))
            except ChatError as exc:
                drops.drop(exc.reason, where, str(exc))
                continue
            writer.counts.documents += kind == "text"
            for rule in chat.truncated:
                truncated[rule] = truncated.get(rule, 0) + 1
            if chat.truncated:
                truncated["chats"] = truncated.get("chats", 0) + 1
            for sample in packer.add(chat):
                writer.write_bin(sample)
        for sample in packer.flush():
            writer.write_bin(sample)
    writer.close_shard()
    return writer


def run_sft_pack(cfg: SftPackConfig) -> Path:
    from lingraft.atomic import atomic_dir
    from lingraft.manifest import new_manifest
    from lingraft.vocabulary.loading import load_tokenizer, tokenizer_fingerprint

    started = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer)
    template = resolve_template(tok, Path(cfg.chat_template).read_text(encoding="utf-8")
                                if cfg.chat_template else None)
    drops = DropLog(strict=cfg.strict)
    with atomic_dir(cfg.out) as tmp:
        writer = pack_chats(cfg, tok, template, tmp, drops)
        counts = writer.counts
        if counts.chats == 0:
            raise LingraftError(f"prep sft: no usable chat in {', '.join(map(str, cfg.input))} "
                                f"(skipped: {dict(drops.counts)})")
        inputs = {f"input{i}": path for i, path in enumerate(cfg.input)}
        inputs["tokenizer"] = cfg.tokenizer
        if cfg.chat_template:
            inputs["chat_template"] = cfg.chat_template
        manifest = new_manifest(STAGE, cfg, inputs=inputs)
        manifest.outputs = packed_outputs(
            writer.records, tokenizer={"spec": cfg.tokenizer, "fingerprint": tokenizer_fingerprint(tok),
                                       "vocab_size": len(tok)},
            dtype=writer.dtype.name, seq_len=cfg.seq_len, sample_start="document", bos_id=None, eos_id=None)
        total = counts.chat_tokens + counts.filler_tokens
        manifest.metrics = {
            "chats_read": counts.chats + drops.total, "chats_kept": counts.chats, "chats_skipped": drops.total,
            "documents_kept": counts.documents,
            "skipped": drops.to_json(), "truncated": counts.truncated, "samples": counts.samples,
            "chat_tokens": counts.chat_tokens, "target_tokens": counts.target_tokens,
            "filler_tokens": counts.filler_tokens, "fill_ratio": round(counts.chat_tokens / max(total, 1), 4),
            "seconds": round(time.perf_counter() - started, 3)}
        manifest.write(tmp)
    log.info("prep sft: %d chats kept (%d plain documents), %d skipped %s, %d truncated; %d samples of %d tokens, "
             "fill %.1f%%", counts.chats, counts.documents, drops.total, dict(drops.counts),
             counts.truncated.get("chats", 0), counts.samples, cfg.seq_len, 100 * counts.chat_tokens / max(total, 1))
    return Path(cfg.out)

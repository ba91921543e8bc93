"""Micro-batches from the packed streams, and the start-up checks that data fits the model.

Each data-parallel rank reads a disjoint slice of the samples (the dataset does the
split). The stream's position is part of every checkpoint, so a resumed run sees exactly
the samples an uninterrupted run would have seen next.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch

from lingraft.data_prep.dataset import IGNORE_INDEX
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)


class SampleSource(Protocol):
    """What the trainer needs from a packed dataset (`data_prep.dataset.PackedDataset`)."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def repeat_first_half(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """The batch with its first `rows` samples rewritten as copy tasks: the sample's first half,
    then that half again, read as one document (so the copy can look back at the original).
    A token the sample did not train on (a masked label) is not a target in either copy, and a
    label that would start a third copy is ignored. Other rows are returned unchanged.
    A half that ends inside a multi-byte character makes the joint invalid text: distillation
    then finds no aligned pair after it, and the copy trains on the cross-entropy alone."""
    if rows <= 0:
        return batch
    length = batch["input_ids"].shape[1]
    half = (length + 1) // 2
    first = batch["input_ids"][:rows, :half]
    # Token k is a target when the label before it is; the first token has no label before it.
    target = torch.cat([batch["labels"][:rows, :1], batch["labels"][:rows, :half - 1]], dim=1) != IGNORE_INDEX
    tokens = torch.cat([first, first, first[:, :1]], dim=1)[:, :length + 1]
    targets = torch.cat([target, target, torch.zeros_like(target[:, :1])], dim=1)[:, :length + 1]
    out = {key: value.clone() for key, value in batch.items()}
    out["input_ids"][:rows] = tokens[:, :length]
    out["labels"][:rows] = tokens[:, 1:].masked_fill(~targets[:, 1:], IGNORE_INDEX)
    out["position_ids"][:rows] = torch.arange(length, dtype=batch["position_ids"].dtype)
    return out


class BatchStream:
    """Stacks samples into micro-batches on `device`; starts a new epoch when the data ends.

    `copy_rows` of every micro-batch become copy tasks (`repeat_first_half`). `extend` adds
    tensors computed from the stacked CPU batch (the distillation teacher's tokens,
    train/distill_batch.py). Both depend on the batch alone, so resuming needs no state of their own.
    """

    KEYS = ("input_ids", "labels", "position_ids")

    def __init__(self, source: SampleSource, micro_batch_size: int, device: torch.device,
                 extend: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                 copy_rows: int = 0) -> None:
        self.source = source
        self.micro_batch_size = micro_batch_size
        self.device = device
        self.extend = extend
        self.copy_rows = copy_rows
        self.epoch = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def _next_sample(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.source)
        for attempt in range(2):
            try:
                return next(self._it)
            except StopIteration:
                if attempt:
                    break
                self.epoch += 1
                log.info("data: starting epoch %d", self.epoch)
                if hasattr(self.source, "set_epoch"):
                    self.source.set_epoch(self.epoch)
                self._it = iter(self.source)
        raise LingraftError("data: the packed dataset has no samples for this rank (too few samples for the world size?)")

    def next_micro_batch(self) -> dict[str, torch.Tensor]:
        samples = [self._next_sample() for _ in range(self.micro_batch_size)]
        batch = {key: torch.stack([torch.as_tensor(s[key], dtype=torch.int64) for s in samples]) for key in self.KEYS}
        batch = repeat_first_half(batch, self.copy_rows)
        if self.extend is not None:
            batch.update(self.extend(batch))
        return {key: value.to(self.device) for key, value in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self.epoch)
        self.source.load_state_dict(state["source"])
        self._it = None


def model_tokenizer_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint of the tokenizer saved with the model, or None if it has none."""
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    from lingraft.vocabulary.loading import load_tokenizer, tokenizer_fingerprint
    return tokenizer_fingerprint(load_tokenizer(str(model_dir)))


def check_data_matches_model(data_dir: Path, model_dir: Path, model_vocab: int) -> dict[str, Any]:
    """Refuse data tokenized with another tokenizer, or with ids the model has no rows for."""
    from lingraft.manifest import ManifestError, read_manifest
    try:
        manifest = read_manifest(data_dir)
    except ManifestError as exc:
        raise LingraftError(f"data: {exc}") from None
    info = manifest.get("outputs", {}).get("tokenizer") or {}
    if "vocab_size" not in info or "fingerprint" not in info:
        raise LingraftError(f"{data_dir}: manifest names no tokenizer fingerprint/vocab_size (not a packed dataset?)")
    if info["vocab_size"] > model_vocab:
        raise LingraftError(f"{data_dir}: tokenized with a vocabulary of {info['vocab_size']} but the model has "
                            f"only {model_vocab} embedding rows; pack with the model's tokenizer")
    model_fp = model_tokenizer_fingerprint(model_dir)
    if model_fp is None:
        log.warning("%s has no tokenizer; cannot check the data's tokenizer fingerprint", model_dir)
    elif model_fp != info["fingerprint"]:
        raise LingraftError(f"{data_dir}: packed with tokenizer {info['fingerprint'][:12]} ({info.get('spec')}), "
                            f"but {model_dir} ships tokenizer {model_fp[:12]}; re-pack with the model's tokenizer")
    return info


def open_packed(data_dir: Path, rank: int, world_size: int, seed: int) -> SampleSource:
    from lingraft.data_prep.dataset import PackedDataset
    return PackedDataset(data_dir, rank=rank, world_size=world_size, seed=seed)

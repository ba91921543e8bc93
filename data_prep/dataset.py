"""A PyTorch dataset over packed token shards (`lingraft prep pack` output).

Sample order: one global permutation of all samples, seeded by (seed, epoch); data-parallel
rank r takes every world_size-th entry starting at r, so ranks see disjoint samples. Every
rank gets total // world_size samples: the last total % world_size samples of the permuted
order are left out (reported as `dropped_remainder`), so all ranks run the same number of
steps.

Each item is a dict of int64 tensors, all of length seq_len:

  input_ids     tokens [s, s + seq_len)
  labels        tokens [s + 1, s + seq_len], -100 where the loss mask is 0 (only when
                the shards carry a mask, where BOS and prompt tokens are 0; plain text has
                none and every token is a target, as in the usual pretraining recipe)
  position_ids  0, 1, 2, ... restarting at every document start inside the sample (the
                sample's first token is position 0 even when it is mid-document)
  document_ids  0 for the sample's first document, +1 at every document start after it

`document_ids` is what a trainer needs for document-masked attention: token i may attend
to token j iff j <= i and document_ids[i] == document_ids[j] (a flex_attention mask_mod,
or an SDPA boolean mask); it has a fixed length, so the default collate stacks it.
`position_ids` alone is what transformers' flash-attention path reads to find packed
sequences. Shards are memory-mapped per process, never pickled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lingraft.data_prep.packed_format import FORMAT, ShardArrays, check_file, open_shard
from lingraft.errors import LingraftError
from lingraft.manifest import ManifestError, read_manifest

IGNORE_INDEX = -100


class PackedDataset(IterableDataset):
    """Samples of a packed folder for one data-parallel rank, resumable from any position.

    `start` (or `load_state_dict`) sets the position in this rank's order from which
    iteration continues. With DataLoader workers, worker w of W yields the positions that
    are w modulo W; `state_dict` is exact per iterating process (num_workers=0, or a
    stateful loader that saves each worker's state).
    """

    def __init__(self, folder: str | Path, *, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True, expected_fingerprint: str | None = None,
                 expected_vocab_size: int | None = None, verify_checksums: bool = False):
        self.folder = Path(folder)
        try:
            manifest = read_manifest(self.folder)
        except ManifestError as exc:
            raise LingraftError(str(exc)) from None
        outputs = manifest.get("outputs", {})
        if outputs.get("format") != FORMAT:   # any stage writing this format (pack, a later SFT packer)
            raise LingraftError(f"{self.folder}: not a packed folder (stage {manifest.get('stage')!r} wrote "
                                f"format {outputs.get('format')!r}; expected {FORMAT})")
        tokenizer = outputs["tokenizer"]
        if expected_fingerprint is not None and expected_fingerprint != tokenizer["fingerprint"]:
            raise LingraftError(f"{self.folder}: packed with tokenizer {tokenizer['spec']} (fingerprint "
                                f"{tokenizer['fingerprint'][:12]}), not the expected {expected_fingerprint[:12]}")
        if expected_vocab_size is not None and expected_vocab_size != tokenizer["vocab_size"]:
            raise LingraftError(f"{self.folder}: packed with a vocabulary of {tokenizer['vocab_size']} ids, "
                                f"the model expects {expected_vocab_size}")
        if not 0 <= rank < world_size:
            raise LingraftError(f"rank {rank} is outside world_size {world_size}")
        self.manifest_fingerprint = manifest["fingerprint"]
        self.seq_len = int(outputs["seq_len"])
        self.dtype = np.dtype(outputs["dtype"])
        self._records = outputs["shards"]
        for record in self._records:   # sizes now (cheap), so a truncated shard fails at open
            for entry in record["files"].values():
                check_file(self.folder, entry, verify_checksums)
        counts = [int(r["samples"]) for r in self._records]
        self._first_sample = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total_samples = int(self._first_sample[-1])
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_samples = self.total_samples // world_size
        self.dropped_remainder = self.total_samples % world_size
        if not 0 <= start <= self.num_samples:
            raise LingraftError(f"start {start} is outside this rank's {self.num_samples} samples")
        self.epoch, self.position = epoch, start
        self._order: np.ndarray | None = None
        self._shards: dict[int, ShardArrays] = {}

    # -- order and position ------------------------------------------------------------

    def _rank_order(self) -> np.ndarray:
        """Global sample indices for this rank, in the order it reads them."""
        if self._order is None:
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(self.total_samples)
            else:
                order = np.arange(self.total_samples, dtype=np.int64)
            self._order = order[self.rank::self.world_size][: self.num_samples].copy()
        return self._order

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch`: a new permutation, read from its beginning."""
        self.epoch, self.position, self._order = epoch, 0, None

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "shuffle": self.shuffle, "manifest": self.manifest_fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "world_size", "shuffle", "rank"):
            if state[key] != getattr(self, key):
                raise LingraftError(f"cannot resume: the saved state has {key}={state[key]!r}, "
                                    f"this dataset {key}={getattr(self, key)!r}")
        if state["manifest"] != self.manifest_fingerprint:
            raise LingraftError(f"cannot resume: {self.folder} was re-packed since the state was saved")
        if self.epoch != state["epoch"]:
            self.epoch, self._order = state["epoch"], None
        self.position = state["position"]

    def __len__(self) -> int:
        """Samples a fresh iteration yields from the current position (this rank, all workers)."""
        return self.num_samples - self.position

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.position + (worker - self.position) % workers
        for pos in range(first, self.num_samples, workers):
            item = self[pos]
            self.position = pos + 1
            yield item
        self.position = max(self.position, self.num_samples)

    # -- reading one sample ------------------------------------------------------------

    def _shard(self, index: int) -> ShardArrays:
        shard = self._shards.get(index)
        if shard is None:
            shard = open_shard(self.folder, self._records[index], self.dtype)
            self._shards[index] = shard
        return shard

    def __getitem__(self, pos: int) -> dict[str, torch.Tensor]:
        """The `pos`-th sample of this rank's order (independent of the current position)."""
        if not 0 <= pos < self.num_samples:
            raise IndexError(f"sample {pos} outside this rank's {self.num_samples}")
        return self.global_sample(int(self._rank_order()[pos]))

    def global_sample(self, index: int) -> dict[str, torch.Tensor]:
        """Sample `index` of the folder in storage order (shard by shard)."""
        shard_index = int(np.searchsorted(self._first_sample, index, side="right")) - 1
        shard = self._shard(shard_index)
        start = int(shard.sample_starts[index - self._first_sample[shard_index]])
        end = start + self.seq_len
        tokens = torch.from_numpy(shard.tokens[start:end + 1].astype(np.int64))
        labels = tokens[1:].clone()
        if shard.mask is not None:
            labels[torch.from_numpy(shard.mask[start + 1:end + 1] == 0)] = IGNORE_INDEX
        docs = shard.doc_starts
        inner = np.asarray(docs[np.searchsorted(docs, start, side="right"):np.searchsorted(docs, end, side="left")])
        return {"input_ids": tokens[:-1], "labels": labels, **document_positions(inner - start, self.seq_len)}

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-open the memory maps themselves; the permutation is cheap to rebuild.
        return {**self.__dict__, "_shards": {}, "_order": None}


def document_positions(doc_starts: np.ndarray, length: int) -> dict[str, torch.Tensor]:
    """`position_ids` and `document_ids` for a window where new documents begin at
    `doc_starts` (sorted offsets in 1..length-1)."""
    document_ids = np.zeros(length, dtype=np.int64)
    document_ids[doc_starts] = 1
    np.cumsum(document_ids, out=document_ids)
    segment_start = np.concatenate([[0], doc_starts]).astype(np.int64)
    position_ids = np.arange(length, dtype=np.int64) - segment_start[document_ids]
    return {"position_ids": torch.from_numpy(position_ids), "document_ids": torch.from_numpy(document_ids)}

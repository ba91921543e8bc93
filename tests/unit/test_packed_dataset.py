"""The PyTorch reader over packed shards: sample contents, loss masks, rank split, resume, bad folders."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lingraft.data_prep.dataset import IGNORE_INDEX, PackedDataset
from lingraft.data_prep.packed_format import ShardBuilder
from lingraft.errors import LingraftError
from tests.helpers import PACK_EOS as EOS
from tests.helpers import PACK_FINGERPRINT as FINGERPRINT
from tests.helpers import PACK_SEQ_LEN as SEQ_LEN
from tests.helpers import build_packed_folder as build_folder


def _random_docs(rng: np.random.Generator, n: int, vocab: int, masked: bool = False) -> list[tuple]:
    docs = []
    for i in range(n):
        ids = rng.integers(1, vocab, size=int(rng.integers(1, 3 * SEQ_LEN)))
        mask = None
        if masked and i % 2 == 0:   # a "prompt" of zeros, then an "answer" of ones
            mask = (np.arange(len(ids)) >= len(ids) // 2).astype(np.uint8)
        docs.append((ids, mask))
    return docs


def _streams(shards: list[list[tuple]], bos_id: int | None = None):
    """Reference token stream, loss mask and document starts of every shard, built in plain Python."""
    out = []
    for docs in shards:
        tokens, mask, starts = [], [], []
        for ids, doc_mask in docs:
            starts.append(len(tokens))
            if bos_id is not None:
                tokens.append(bos_id)
                mask.append(0)
            tokens += ids.tolist()
            mask += [1] * len(ids) if doc_mask is None else doc_mask.tolist()
            tokens.append(EOS)
            mask.append(1)
        out.append((tokens, mask, starts))
    return out


@pytest.fixture
def docs() -> list[list[tuple]]:
    rng = np.random.default_rng(0)
    return [_random_docs(rng, 30, 1000), _random_docs(rng, 17, 1000)]


def test_samples_follow_the_stream_with_positions_reset_at_documents(tmp_path, docs):
    folder = build_folder(tmp_path / "p", docs)
    ds = PackedDataset(folder, shuffle=False)
    items = list(ds)
    assert len(items) == ds.total_samples == ds.num_samples > 0
    expected = []
    for tokens, _, starts in _streams(docs):
        for s in range(0, len(tokens) - SEQ_LEN, SEQ_LEN):
            positions, doc_ids, doc, last = [], [], 0, s
            for t in range(s, s + SEQ_LEN):
                if t in starts and t != s:
                    doc, last = doc + 1, t
                positions.append(t - last)
                doc_ids.append(doc)
            expected.append((tokens[s:s + SEQ_LEN], tokens[s + 1:s + SEQ_LEN + 1], positions, doc_ids))
    assert len(expected) == len(items)
    for item, (inputs, labels, positions, doc_ids) in zip(items, expected):
        assert all(v.dtype == torch.int64 and v.shape == (SEQ_LEN,) for v in item.values())
        assert item["input_ids"].tolist() == inputs and item["labels"].tolist() == labels
        assert item["position_ids"].tolist() == positions and item["document_ids"].tolist() == doc_ids


def test_loss_mask_hides_prompt_tokens_and_bos_from_the_loss(tmp_path):
    rng = np.random.default_rng(1)
    shards = [_random_docs(rng, 25, 1000, masked=True)]
    folder = build_folder(tmp_path / "m", shards, bos_id=999)
    ds = PackedDataset(folder, shuffle=False)
    tokens, mask, _ = _streams(shards, bos_id=999)[0]
    assert ds[0]["input_ids"][0].item() == 999
    for i, s in enumerate(range(0, len(tokens) - SEQ_LEN, SEQ_LEN)):
        want = [tok if m else IGNORE_INDEX for tok, m in zip(tokens[s + 1:s + SEQ_LEN + 1], mask[s + 1:s + SEQ_LEN + 1])]
        assert ds[i]["labels"].tolist() == want
    assert (np.array(mask) == 0).sum() > len(shards[0])   # prompts were masked, not only BOS


def test_ranks_get_disjoint_equal_seeded_slices(tmp_path, docs):
    folder = build_folder(tmp_path / "p", docs)
    key = lambda item: tuple(item["input_ids"].tolist())  # noqa: E731 - samples are distinct random tokens
    world = 3
    ranks = [PackedDataset(folder, seed=7, rank=r, world_size=world) for r in range(world)]
    seen = [[key(item) for item in ds] for ds in ranks]
    total = ranks[0].total_samples
    assert all(len(s) == total // world for s in seen) and ranks[0].dropped_remainder == total % world
    assert len(set().union(*map(set, seen))) == world * (total // world)
    again = [key(item) for item in PackedDataset(folder, seed=7, rank=1, world_size=world)]
    other_seed = [key(item) for item in PackedDataset(folder, seed=8, rank=1, world_size=world)]
    next_epoch = [key(item) for item in PackedDataset(folder, seed=7, epoch=1, rank=1, world_size=world)]
    assert again == seen[1] and other_seed != seen[1] and next_epoch != seen[1]


def test_state_dict_and_start_resume_exactly(tmp_path, docs):
    folder = build_folder(tmp_path / "p", docs)
    full = [item["input_ids"].tolist() for item in PackedDataset(folder, seed=3, rank=1, world_size=2)]
    ds = PackedDataset(folder, seed=3, rank=1, world_size=2)
    it = iter(ds)
    first = [next(it)["input_ids"].tolist() for _ in range(5)]
    state = ds.state_dict()
    resumed = PackedDataset(folder, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 5
    assert first + [item["input_ids"].tolist() for item in resumed] == full
    assert [item["input_ids"].tolist() for item in PackedDataset(folder, seed=3, rank=1, world_size=2, start=5)] \
        == full[5:]
    with pytest.raises(LingraftError, match="world_size"):
        PackedDataset(folder, seed=3, rank=1, world_size=3).load_state_dict(state)


def test_dataloader_workers_read_every_sample_once_and_never_pickle_maps(tmp_path, docs):
    folder = build_folder(tmp_path / "p", docs)
    ds = PackedDataset(folder, seed=5)
    ds[0]   # opens a shard's memory maps in this process
    assert len(pickle.dumps(ds)) < 20_000
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert batches[0]["input_ids"].shape == (4, SEQ_LEN)
    got = sorted(tuple(row) for b in batches for row in b["input_ids"].tolist())
    assert got == sorted(tuple(item["input_ids"].tolist()) for item in PackedDataset(folder, seed=5))


def test_uint32_ids_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    shards = [_random_docs(rng, 10, 128_256)]
    folder = build_folder(tmp_path / "big", shards, vocab=128_256)
    assert next(folder.glob("*.tokens.bin")).stat().st_size == 4 * len(_streams(shards)[0][0])
    tokens = _streams(shards)[0][0]
    assert PackedDataset(folder, shuffle=False)[1]["input_ids"].tolist() == tokens[SEQ_LEN:2 * SEQ_LEN]
    assert max(tokens) > 65_535


def test_mismatched_tokenizer_and_damaged_shards_are_clear_errors(tmp_path, docs):
    folder = build_folder(tmp_path / "p", docs)
    with pytest.raises(LingraftError, match="not the expected"):
        PackedDataset(folder, expected_fingerprint="cd" * 32)
    with pytest.raises(LingraftError, match="vocabulary of 1000 ids, the model expects 32000"):
        PackedDataset(folder, expected_vocab_size=32000)
    PackedDataset(folder, expected_fingerprint=FINGERPRINT, expected_vocab_size=1000)

    tokens = folder / "shard_00001.tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[10] ^= 0xFF
    tokens.write_bytes(bytes(data))
    PackedDataset(folder)   # same size: only the checksum can tell
    with pytest.raises(LingraftError, match="shard_00001.tokens.bin: sha256"):
        PackedDataset(folder, verify_checksums=True)
    tokens.write_bytes(bytes(data[:-6]))
    with pytest.raises(LingraftError, match="shard_00001.tokens.bin: truncated"):
        PackedDataset(folder)
    with pytest.raises(LingraftError, match="no manifest"):
        PackedDataset(tmp_path)
    with pytest.raises(LingraftError, match="loss mask has 2 entries for a document of 3 tokens"):
        ShardBuilder(np.dtype(np.uint16)).add([1, 2, 3], mask=[1, 0])
    with pytest.raises(LingraftError, match="0 or 1"):
        ShardBuilder(np.dtype(np.uint16)).add([1, 2], mask=[1, 2])
    with pytest.raises(LingraftError, match="does not fit uint16"):
        ShardBuilder(np.dtype(np.uint16)).add([70_000])

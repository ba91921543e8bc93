"""The one checkpoint writer, shard by shard: replacements are asked for just before their shard
is written, untouched shards are copied byte for byte, the index is the writer's (atomic) one."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lingraft import hf_folder_writer
from lingraft.errors import LingraftError
from lingraft.hf_folder import CHECKSUM_KEY, INDEX_FILE, open_checkpoint
from lingraft.hf_folder_writer import write_checkpoint, write_checkpoint_per_shard
from lingraft.hashing import sha256_file

SHARDS = {"model-00001-of-00002.safetensors": {"a.weight": torch.arange(6.0).view(2, 3), "b.weight": torch.ones(4)},
          "model-00002-of-00002.safetensors": {"c.weight": torch.full((3, 3), 2.0)}}


@pytest.fixture
def two_shards(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name, tensors in SHARDS.items():
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
    weight_map = {t: name for name, tensors in SHARDS.items() for t in tensors}
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return open_checkpoint(folder)


def test_replacements_are_made_one_shard_at_a_time(two_shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    asked = []

    def replacements(members):
        asked.append((members, sorted(p.name for p in out.glob("*.safetensors"))))
        return {"c.weight": torch.zeros(3, 3)} if "c.weight" in members else {}

    checksums = write_checkpoint_per_shard(two_shards, out, replacements)
    first, second = SHARDS
    assert asked == [(["a.weight", "b.weight"], []), (["c.weight"], [first])]   # shard 1 written before shard 2 is asked
    assert sha256_file(out / first) == sha256_file(two_shards.folder / first)  # untouched: byte for byte
    assert torch.equal(load_file(str(out / second))["c.weight"], torch.zeros(3, 3))
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["metadata"][CHECKSUM_KEY] == checksums == {n: sha256_file(out / n) for n in SHARDS}
    assert index["weight_map"] == {"a.weight": first, "b.weight": first, "c.weight": second}
    (out / "config.json").write_text("{}")
    open_checkpoint(out)                                                      # the checksums verify


def test_same_bytes_as_the_whole_model_writer(two_shards, tmp_path):
    lazy, eager = tmp_path / "lazy", tmp_path / "eager"
    lazy.mkdir(), eager.mkdir()
    new = {"a.weight": torch.full((2, 3), 7.0)}
    write_checkpoint_per_shard(two_shards, lazy, lambda members: {k: v for k, v in new.items() if k in members})
    write_checkpoint(two_shards, eager, new, max_shard_bytes=64)
    assert {p.name: sha256_file(p) for p in lazy.iterdir()} == {p.name: sha256_file(p) for p in eager.iterdir()}


def test_index_is_written_atomically(two_shards, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(hf_folder_writer, "write_json", lambda path, data: written.append(path.name))
    write_checkpoint_per_shard(two_shards, tmp_path, lambda members: {})
    assert written == [INDEX_FILE]


def test_a_replacement_outside_its_shard_is_refused(two_shards, tmp_path):
    with pytest.raises(LingraftError, match="cannot replace c.weight"):
        write_checkpoint_per_shard(two_shards, tmp_path, lambda members: {"c.weight": torch.zeros(3, 3)})

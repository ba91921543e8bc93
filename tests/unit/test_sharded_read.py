"""Reading a rank's share of a tensor straight from a safetensors shard (no mmap, no staging copy)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lingraft.errors import LingraftError
from lingraft.hf_folder import open_checkpoint, read_flat_range


@pytest.fixture
def ckpt(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(37, 11, generator=gen).to(torch.bfloat16), "b": torch.randn(5, generator=gen)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    return open_checkpoint(tmp_path), tensors


def test_ranges_and_in_place_reads_match_the_stored_tensor(ckpt):
    checkpoint, tensors = ckpt
    info = checkpoint.tensors["a"]
    flat = tensors["a"].flatten()
    assert torch.equal(read_flat_range(info, 13, 200), flat[13:200])
    assert read_flat_range(info, 9, 9).numel() == 0
    out = torch.empty(150, dtype=torch.bfloat16)
    assert read_flat_range(info, 40, 190, out=out) is out and torch.equal(out, flat[40:190])
    with pytest.raises(LingraftError, match="has 407 elements, asked for"):
        read_flat_range(info, 400, 408)
    with pytest.raises(ValueError, match="contiguous CPU"):
        read_flat_range(info, 0, 10, out=torch.empty(10))          # fp32 buffer for bf16 data


def test_read_into_casts_chunk_by_chunk(ckpt, monkeypatch):
    from lingraft.train import sharded_load
    checkpoint, tensors = ckpt
    monkeypatch.setattr(sharded_load, "CAST_CHUNK", 7)             # many chunks, a ragged last one
    dest = torch.empty(4, 11)                                        # rows 3..6 as fp32, the FSDP master dtype
    sharded_load.read_into(checkpoint.tensors["a"], 3 * 11, dest)
    assert torch.equal(dest, tensors["a"][3:7].float())
    whole = sharded_load.read_whole(checkpoint, "b", (5,), torch.float32, torch.device("cpu"))
    assert torch.equal(whole, tensors["b"])
    with pytest.raises(LingraftError, match=r"b is \[5\] in the checkpoint, the model expects \[6\]"):
        sharded_load.read_whole(checkpoint, "b", (6,), torch.float32, torch.device("cpu"))

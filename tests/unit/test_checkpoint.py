"""Checkpoint I/O: shard verification, embedding names, and the streaming, re-sharding writer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lingraft.hf_folder import (INDEX_FILE, SINGLE_FILE, embedding_names, open_checkpoint, read_tensors,
                                 resolve_model)
from lingraft.hf_folder_writer import write_checkpoint
from lingraft.errors import LingraftError
from tests.helpers import all_tensors, save_tiny_llama


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("sharded"), vocab=300, tied=False)


def test_open_checkpoint_reads_every_shard(sharded):
    ckpt = open_checkpoint(sharded)
    assert len(ckpt.shards) > 1
    assert set(ckpt.tensors) == set(all_tensors(sharded))
    names = embedding_names(ckpt)
    assert (names.input, names.output, names.tied) == ("model.embed_tokens.weight", "lm_head.weight", False)
    table = read_tensors(ckpt, [names.input])[names.input]
    assert table.shape == (300, 32) and table.dtype == torch.bfloat16


def test_writer_copies_bits_and_reshards(sharded, tmp_path):
    ckpt = open_checkpoint(sharded)
    new_embed = torch.randn(320, 32).to(torch.bfloat16)
    checksums = write_checkpoint(ckpt, tmp_path, {"model.embed_tokens.weight": new_embed}, max_shard_bytes=60_000)
    (tmp_path / "config.json").write_text(json.dumps(ckpt.config))
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["metadata"]["shard_sha256"]) == set(checksums) == set(index["weight_map"].values())
    assert len(checksums) > 1
    before, after = all_tensors(sharded), all_tensors(tmp_path)
    assert set(before) == set(after)
    for name, tensor in before.items():
        if name != "model.embed_tokens.weight":
            assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert torch.equal(after["model.embed_tokens.weight"], new_embed)
    reopened = open_checkpoint(tmp_path)        # verifies the recorded sha256 of every shard
    assert reopened.tensors["model.embed_tokens.weight"].shape == (320, 32)


def test_single_file_when_everything_fits(sharded, tmp_path):
    checksums = write_checkpoint(open_checkpoint(sharded), tmp_path, {})
    assert list(checksums) == [SINGLE_FILE] and not (tmp_path / INDEX_FILE).exists()
    before, after = all_tensors(sharded), all_tensors(tmp_path)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_shard(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "m")
    sorted(folder.glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(LingraftError, match="missing shard"):
        open_checkpoint(folder)


def test_truncated_shard(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "t")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(LingraftError, match=f"{shard.name}: corrupt shard"):
        open_checkpoint(folder)


def test_garbage_header(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "g")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 64)
    with pytest.raises(LingraftError, match="header is not JSON"):
        open_checkpoint(folder)


def test_checksum_mismatch(sharded, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    ckpt = open_checkpoint(sharded)
    write_checkpoint(ckpt, folder, {}, max_shard_bytes=60_000)
    (folder / "config.json").write_text(json.dumps(ckpt.config))
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF                                  # same size, one flipped bit pattern
    shard.write_bytes(bytes(data))
    with pytest.raises(LingraftError, match="sha256 differs"):
        open_checkpoint(folder)
    open_checkpoint(folder, verify_checksums=False)   # the layout itself is still valid


def test_index_naming_an_absent_tensor(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "i")
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"]["model.extra.weight"] = next(iter(index["weight_map"].values()))
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(LingraftError, match="index lists model.extra.weight"):
        open_checkpoint(folder)


def test_unknown_architecture(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "u")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LingraftError, match="unknown architecture model_type='no_such_arch'"):
        embedding_names(open_checkpoint(folder))


def test_names_from_model_class_for_unlisted_architecture(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    config = GPTNeoXConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, tie_word_embeddings=False)
    GPTNeoXForCausalLM(config).save_pretrained(str(tmp_path))
    names = embedding_names(open_checkpoint(tmp_path))
    assert (names.input, names.output, names.tied) == ("gpt_neox.embed_in.weight", "embed_out.weight", False)


def test_tied_llama_has_no_stored_head(tmp_path):
    folder = save_tiny_llama(tmp_path, vocab=100, tied=True, shard=None)
    names = embedding_names(open_checkpoint(folder))
    assert names.tied and names.output is None


def test_resolve_model_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LingraftError, match="some-org/some-model: not a local path and cannot be fetched"):
        resolve_model("some-org/some-model")
    with pytest.raises(LingraftError, match="no such model folder"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(LingraftError, match="a model is a Hugging Face folder, a hub id or a .gguf file"):
        resolve_model(tmp_path / "weights.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LingraftError, match="convert PyTorch .bin weights"):
        open_checkpoint(tmp_path)

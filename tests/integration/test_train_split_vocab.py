"""Split vocabulary tables: same outputs as the plain tables, only new rows train."""
from __future__ import annotations

import pytest
import torch

from tests.integration.train_tiny import VOCAB, make_tiny_llama, packed_samples
from lingraft.train.optim import build_optimizer
from lingraft.train.config import OptimConfig
from lingraft.train.split_vocab import VocabSplit, merge_rows, split_model_tables


def _load(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("tied", [False, True])
def test_split_model_matches_plain_model_and_trains_only_new_rows(tmp_path, tied):
    path = make_tiny_llama(tmp_path / "m", tied=tied)
    plain, split_model = _load(path), _load(path)
    embed_before = plain.get_input_embeddings().weight.detach().clone()
    head_before = plain.get_output_embeddings().weight.detach().clone()
    new_ids = torch.tensor([3, 17, 18, 50, VOCAB - 1])      # scattered, not a suffix
    split = split_model_tables(split_model, new_ids)
    assert not split.is_suffix
    batch = packed_samples(2)[0]
    ids = batch["input_ids"].unsqueeze(0)
    ids[0, :5] = new_ids                                        # exercise both tables
    torch.testing.assert_close(split_model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=1e-6)

    trainable = [p for p in split_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == (1 if tied else 2) * len(new_ids) * 64 + \
        sum(p.numel() for n, p in split_model.named_parameters() if "layers" in n or n.endswith("norm.weight"))
    split_model.requires_grad_(False)
    split_model.get_input_embeddings().requires_grad_(True)
    split_model.get_output_embeddings().requires_grad_(True)
    opt = build_optimizer(split_model, OptimConfig(lr=0.1, weight_decay=0.1))
    assert sum(len(g["params"]) for g in opt.param_groups) == (1 if tied else 2)
    for _ in range(2):
        split_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    embed_after = split_model.get_input_embeddings().weight
    head_after = split_model.get_output_embeddings().weight
    old = ~split.is_new
    assert torch.equal(embed_after[old], embed_before[old])      # bit-identical
    assert torch.equal(head_after[old], head_before[old])
    assert not torch.equal(embed_after[new_ids], embed_before[new_ids])
    if tied:
        assert split_model.get_output_embeddings().new is split_model.get_input_embeddings().new


def test_suffix_split_and_merge_roundtrip():
    table = torch.randn(10, 4)
    split = VocabSplit(torch.arange(7, 10), 10)
    assert split.is_suffix
    assert torch.equal(merge_rows(table[split.old_ids], table[split.new_ids], split), table)


def test_bad_new_ids_are_clear_errors():
    from lingraft.errors import LingraftError
    with pytest.raises(LingraftError, match="outside the vocabulary"):
        VocabSplit(torch.tensor([5, 12]), 10)
    with pytest.raises(LingraftError, match="no new token"):
        VocabSplit(torch.tensor([], dtype=torch.int64), 10)


def test_new_rows_come_from_the_token_map_and_padding_rows_stay_frozen(tmp_path):
    """`lingraft init` pads tables past the tokenizer: the map covers fewer tokens than rows."""
    from lingraft.errors import LingraftError
    from lingraft.train.config import TrainConfig
    from lingraft.train.model_setup import new_token_ids
    from lingraft.vocabulary.token_map import TokenMap
    rows = [{0: 1.0}, {1: 1.0}, {0: 0.5, 1: 0.5}, {}]
    TokenMap.from_rows(rows, ["kept", "special", "mean", "fallback"], old_vocab=2).save(tmp_path / "map.safetensors")
    cfg = TrainConfig(model=tmp_path, data=tmp_path, out_dir=tmp_path / "run", max_steps=1,
                      trainable="new_rows", token_map=tmp_path / "map.safetensors")
    assert new_token_ids(cfg, vocab_size=64).tolist() == [2, 3]      # rows 4..63 are padding
    with pytest.raises(LingraftError, match="covers 4 tokens, the model has only 3 rows"):
        new_token_ids(cfg, vocab_size=3)

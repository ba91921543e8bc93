"""`copy_share`: samples of a training micro-batch rewritten as copy tasks (train/data.py)."""
from __future__ import annotations

import pytest
import torch

from lingraft.config import ConfigError, build_config
from lingraft.data_prep.dataset import IGNORE_INDEX
from lingraft.train.config import TrainConfig
from lingraft.train.data import repeat_first_half


def batch_of(rows: int, length: int) -> dict[str, torch.Tensor]:
    ids = torch.arange(rows * length).reshape(rows, length) + 10
    positions = torch.cat([torch.arange(3), torch.arange(length - 3)]).repeat(rows, 1)   # two documents a row
    return {"input_ids": ids, "labels": ids + 1, "position_ids": positions}


@pytest.mark.parametrize("length", [8, 7])
def test_the_first_rows_repeat_their_first_half_as_one_document(length):
    batch = batch_of(3, length)
    out = repeat_first_half(batch, rows=2)
    half = (length + 1) // 2
    for row in range(2):
        first = batch["input_ids"][row, :half].tolist()
        assert out["input_ids"][row].tolist() == (first + first)[:length]
        # Every position predicts the next token of the copy task; the last would start a third copy.
        assert out["labels"][row, :-1].tolist() == (first + first)[1:length]
        assert out["labels"][row, -1].item() == IGNORE_INDEX
        assert out["position_ids"][row].tolist() == list(range(length))
    for key in batch:                                                  # the other row, and the input, untouched
        assert torch.equal(out[key][2], batch[key][2])
        assert torch.equal(batch[key], batch_of(3, length)[key])


def test_no_copy_rows_is_the_batch_itself():
    batch = batch_of(2, 6)
    assert repeat_first_half(batch, rows=0) is batch


def test_the_share_must_give_whole_samples(tmp_path):
    base = {"model": str(tmp_path), "data": str(tmp_path), "out_dir": str(tmp_path), "max_steps": 1}
    assert build_config(TrainConfig, overrides={**base, "micro_batch_size": 4, "copy_share": 0.5}).copy_rows == 2
    with pytest.raises(ConfigError, match="copy_share.*whole number"):
        build_config(TrainConfig, overrides={**base, "micro_batch_size": 1, "copy_share": 0.5})
    with pytest.raises(ConfigError, match="copy_share.*in \\[0, 1\\]"):
        build_config(TrainConfig, overrides={**base, "copy_share": 1.5})

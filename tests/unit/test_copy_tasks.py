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
        # Every position predicts the next token of the copy task; at an even length the last would
        # start a third copy, at an odd one it is the copy's last token.
        want = (first + first + [IGNORE_INDEX])[1:length + 1]
        assert out["labels"][row].tolist() == want
        assert out["position_ids"][row].tolist() == list(range(length))
    for key in batch:                                                  # the other row, and the input, untouched
        assert torch.equal(out[key][2], batch[key][2])
        assert torch.equal(batch[key], batch_of(3, length)[key])


def test_a_token_the_sample_did_not_train_on_is_no_target_in_either_copy():
    batch = batch_of(1, 8)
    batch["labels"][0, 1] = IGNORE_INDEX                 # token 2 (a prompt, say) is not a target
    out = repeat_first_half(batch, rows=1)
    first = batch["input_ids"][0, :4].tolist()
    assert out["labels"][0].tolist() == [first[1], IGNORE_INDEX, first[3], first[0],
                                         first[1], IGNORE_INDEX, first[3], IGNORE_INDEX]


def test_the_stream_hands_the_rewritten_batch_to_the_teacher():
    from lingraft.train.data import BatchStream
    samples = [{key: value[0] for key, value in batch_of(1, 6).items()} for _ in range(2)]
    seen = []
    stream = BatchStream(samples, 2, torch.device("cpu"), extend=lambda b: seen.append(b["input_ids"].clone()) or {},
                         copy_rows=1)
    out = stream.next_micro_batch()
    assert torch.equal(seen[0], out["input_ids"]) and seen[0][0].tolist() == [10, 11, 12, 10, 11, 12]
    assert seen[0][1].tolist() == list(range(10, 16))


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

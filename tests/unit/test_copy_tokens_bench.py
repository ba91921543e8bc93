"""bench/copy_tokens.py: the per-class counts, which rows are new, and token counts of a packed mix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lingraft.errors import LingraftError
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap
from tests.conftest import REPO
from tests.helpers import PACK_EOS, build_packed_folder, load_script


def load_bench():
    return load_script(REPO / "bench" / "copy_tokens.py")


def test_class_stats_count_top1_logprob_and_new_confusions():
    bench = load_bench()
    logprobs = torch.log(torch.tensor([[0.7, 0.2, 0.1],     # target 0: right
                                       [0.1, 0.3, 0.6],     # target 1: wrong, top-1 is token 2
                                       [0.5, 0.4, 0.1]]))   # target 1: wrong, top-1 is token 0
    is_new = torch.tensor([False, False, True])
    stats = bench.ClassStats()
    stats.add(logprobs, torch.tensor([0, 1, 1]), is_new[logprobs.argmax(-1)])
    summary = stats.summary()
    assert summary["tokens"] == 3
    assert summary["top1_right"] == round(1 / 3, 4)
    assert abs(summary["mean_logprob"] - float(torch.log(torch.tensor([0.7, 0.3, 0.4])).mean())) < 1e-4
    assert summary["wrong_top1_is_new"] == 0.5   # of the two wrong top-1s, one is a new token


def test_new_rows_come_from_the_token_map_and_none_without_one(tmp_path):
    bench = load_bench()
    TokenMap.from_rows([{0: 1.0}, {1: 1.0}, {0: 0.5, 1: 0.5}, {}], ["kept", "special", "mean", "fallback"],
                       old_vocab=2).save(tmp_path / TOKEN_MAP_NAME)
    # Padding rows past the map (a table padded to a multiple) are not counted as new.
    assert bench.new_row_mask(tmp_path, 6).tolist() == [False, False, True, True, False, False]
    assert not bench.new_row_mask(tmp_path / "no_map", 6).any()


def test_count_bins_and_the_counts_of_a_packed_folder(tmp_path):
    bench = load_bench()
    assert [bench.count_bin(c) for c in (0, 1, 9, 10, 99, 100, 999, 1000, 10**6)] == [
        "0-0", "1-9", "1-9", "10-99", "10-99", "100-999", "100-999", "1000+", "1000+"]
    docs = [[(np.array([5, 5, 7]), None), (np.array([7, 9]), None)], [(np.array([5]), None)]]
    counts = bench.pack_token_counts(build_packed_folder(tmp_path / "pack", docs, vocab=12))
    expected = np.zeros(12, dtype=np.int64)
    expected[[5, 7, 9, PACK_EOS]] = [3, 2, 1, 3]        # each document ends with EOS; both shards count
    assert counts.tolist() == expected.tolist()
    with pytest.raises(LingraftError, match="manifest"):
        bench.pack_token_counts(tmp_path / "not_a_pack")

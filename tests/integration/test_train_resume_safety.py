"""Trainer checkpoints you can trust: a broken `latest`, pruning, and fsync before publication."""
from __future__ import annotations

import logging
import os

import pytest

from lingraft.errors import LingraftError
from lingraft.train.dist import DistInfo
from lingraft.train.loop import train
from lingraft.train.metrics_log import read_metrics
from lingraft.train.trainer_checkpoint import LATEST, STATE_FILE, _prune, checkpoint_root, latest_checkpoint, \
    save_checkpoint
from tests.integration.train_tiny import in_memory_source, make_tiny_llama, tiny_config

ONE_RANK = DistInfo(rank=0, world_size=1, local_rank=0)


def test_latest_naming_a_missing_checkpoint_resumes_from_the_newest_complete_one(tmp_path, caplog):
    model = make_tiny_llama(tmp_path / "m")
    overrides = {"checkpoint.every_steps": 2, "checkpoint.keep_last": 3}
    train(tiny_config(model, tmp_path / "run", max_steps=4, **overrides), in_memory_source)
    root = checkpoint_root(tmp_path / "run")
    (root / LATEST).write_text("step_00000006\n")          # lost on the way (or deleted by hand)
    with caplog.at_level(logging.WARNING):
        train(tiny_config(model, tmp_path / "run", max_steps=6, **overrides), in_memory_source)
    assert "falling back to the newest complete checkpoint, step_00000004" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]    # resumed at 4, not 0
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000006"]


def test_latest_naming_nothing_with_no_complete_checkpoint_left_is_an_error(tmp_path):
    root = checkpoint_root(tmp_path)
    (root / "step_00000002").mkdir(parents=True)             # incomplete: no trainer state
    (root / LATEST).write_text("step_00000004\n")
    with pytest.raises(LingraftError, match=r"names checkpoint 'step_00000004'.*checkpoint.resume=false"):
        latest_checkpoint(tmp_path)


def _complete(root, step):
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")
    return folder


def test_pruning_never_deletes_the_checkpoint_just_written_nor_newer_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 8):
        _complete(root, step)
    (root / "step_00000003").mkdir()                         # incomplete: left for a person to look at
    written = _complete(root, 6)                             # a run restarted with resume off
    _prune(root, keep_last=2, written=written)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000004", "step_00000006",
                                                      "step_00000008"]


@pytest.fixture
def io_events(monkeypatch):
    """fsync (by path) and rename calls, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_before_publication(events, final):
    published = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final))
    assert ("fsync", str(final.parent)) in events[published:]          # the rename itself is durable
    return events[published][1], {e[1] for e in events[:published] if e[0] == "fsync"}


def test_files_and_folders_are_fsynced_before_the_checkpoint_is_published(tmp_path, io_events):
    def save_engine(folder):
        (folder / "weights.bin").write_bytes(b"\0" * 1024)     # a plain write, as torch.save or DeepSpeed do

    final = save_checkpoint(tmp_path, 2, ONE_RANK, save_engine, {"step": 2, "data": {}}, keep_last=2)
    tmp, synced = _synced_before_publication(io_events, final)
    assert {f"{tmp}/engine/weights.bin", f"{tmp}/engine", f"{tmp}/rng_rank0.pt", tmp} <= synced


def test_atomic_folders_are_fsynced_before_the_rename(tmp_path, io_events):
    from lingraft.atomic import atomic_dir
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "shard.bin").write_bytes(b"x")
    tmp, synced = _synced_before_publication(io_events, tmp_path / "out")
    assert {f"{tmp}/sub/shard.bin", f"{tmp}/sub", tmp} <= synced

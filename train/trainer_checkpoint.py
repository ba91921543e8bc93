"""Checkpoint folders: atomic publication, keep-last-K, RNG state, finding the newest.

Layout under ``<out_dir>/checkpoints``::

    step_00000100/            one complete checkpoint
        engine/               the backend's own files (ZeRO shards or a torch.save file)
        rng_rank<r>.pt        python/numpy/torch RNG of rank r
        trainer_state.json    step, data position per rank, run meta (what trained, base model)
    latest                    name of the newest complete checkpoint

All ranks write into ``.tmp-step_...`` (a shared filesystem is assumed across nodes);
one rank per node fsyncs what was written (its node's page cache holds its ranks' files),
then, after a barrier, rank 0 renames the folder into place and only then updates
``latest``. A run killed at any moment leaves either the previous or the new checkpoint,
never half of one. A ``latest`` that names no complete checkpoint (lost, or deleted by
hand) falls back to the newest complete one, with a warning; pruning never deletes the
checkpoint just written nor any newer one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lingraft.atomic import TMP_PREFIX, atomic_open, clean_stale_tmp, fsync_dir, fsync_tree, out_of_space, write_json
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.train.dist import DistInfo, barrier

log = get_logger(__name__)

ENGINE_DIR = "engine"
STATE_FILE = "trainer_state.json"
LATEST = "latest"


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    # numpy's key array travels as a tensor so the file loads with weights_only=True (no pickle).
    kind, keys, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), *rest),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, step: int, dist: DistInfo, save_engine: Callable[[Path], None],
                    trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `step` with every rank; returns its final path."""
    root = checkpoint_root(out_dir)
    final = root / step_name(step)
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / ENGINE_DIR).mkdir(parents=True)
    barrier()
    try:
        save_engine(tmp / ENGINE_DIR)
        torch.save(rng_state(), tmp / f"rng_rank{dist.rank}.pt")
        _gather_data_states(tmp, dist, trainer_state)
    except (OSError, RuntimeError) as exc:
        if not _write_failure(exc):
            raise
        shutil.rmtree(tmp, ignore_errors=True)      # give the space back; the last checkpoint is untouched
        raise _save_failed(out_dir, step, exc) from exc
    barrier()
    if dist.local_rank == 0:
        fsync_tree(tmp)             # this node's ranks' files are durable before anyone publishes them
    barrier()
    if dist.is_main:
        _publish(tmp, final)
        with atomic_open(root / LATEST) as fh:
            fh.write(final.name + "\n")
        _prune(root, keep_last, final)
    barrier()
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` onto `final`; an existing `final` (the same step redone after a crash past
    the rename) is moved aside first and removed only once the new one is in place."""
    old = final.with_name(f"{TMP_PREFIX}{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_failure(exc: BaseException) -> bool:
    """A failed write: an OSError, or torch's file writer failing (which drops the errno)."""
    return isinstance(exc, OSError) or out_of_space(exc) or "inline_container" in str(exc)


def _save_failed(out_dir: Path, step: int, exc: BaseException) -> LingraftError:
    cause = "out of disk space" if out_of_space(exc) else str(exc).splitlines()[0][:200]
    try:
        last = latest_checkpoint(out_dir)
    except LingraftError:       # `latest` names nothing that is left: say so below, do not mask the cause
        last = None
    return LingraftError(f"writing checkpoint {step_name(step)} failed ({cause}; is the disk full?). The last "
                         f"good checkpoint is {last if last else 'none yet'}, intact: free space and rerun to resume")


def _gather_data_states(tmp: Path, dist: DistInfo, trainer_state: dict[str, Any]) -> None:
    """Each rank's data position goes into its own file; rank 0 also writes the shared state."""
    write_json(tmp / f"data_rank{dist.rank}.json", trainer_state.pop("data"))
    if dist.is_main:
        write_json(tmp / STATE_FILE, {**trainer_state, "world_size": dist.world_size})


def _prune(root: Path, keep_last: int, written: Path) -> None:
    """Keep `written` and the keep_last - 1 newest complete checkpoints before it. Newer ones
    (a run restarted with resume off) are not this run's to delete; incomplete ones are left
    for a person to look at."""
    older = [p for p in complete_checkpoints(root) if p.name < written.name]
    for old in older[:max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders with their trainer state, oldest first (step names sort by step)."""
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint `latest` names; if it names none that is complete, the newest complete
    one (with a warning). A pointer to nothing, with no complete checkpoint left, is an
    error: starting again from step 0 would silently throw the run's progress away."""
    root = checkpoint_root(out_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        complete = complete_checkpoints(root)
        if complete:       # a crash between the rename and the pointer's update
            log.warning("%s: no %s pointer; resuming from the newest complete checkpoint, %s",
                        root, LATEST, complete[-1].name)
        return complete[-1] if complete else None
    named = pointer.read_text().strip()
    path = root / named
    if named and (path / STATE_FILE).is_file():
        return path
    complete = complete_checkpoints(root)
    if not complete:
        raise LingraftError(f"{pointer} names checkpoint {named!r}, which is missing or incomplete, and no complete "
                            f"checkpoint is left in {root}. Restore it, or delete {pointer} (or set "
                            "checkpoint.resume=false) to start again from step 0")
    log.warning("%s names %r, which is missing or incomplete; falling back to the newest complete checkpoint, %s",
                pointer, named, complete[-1].name)
    return complete[-1]


def load_trainer_state(ckpt: Path, dist: DistInfo) -> dict[str, Any]:
    state = json.loads((ckpt / STATE_FILE).read_text())
    if state["world_size"] != dist.world_size:
        raise LingraftError(f"{ckpt}: written by {state['world_size']} ranks, resuming with {dist.world_size}; "
                            "exact resume needs the same world size (export and start a new run instead)")
    state["data"] = json.loads((ckpt / f"data_rank{dist.rank}.json").read_text())
    set_rng_state(torch.load(ckpt / f"rng_rank{dist.rank}.pt", weights_only=True))
    return state


# Run meta (train/loop.py `run_meta`) that a resumed run must share with the checkpoint, and the
# setting to change back. Keys a checkpoint predates are not compared.
RESUME_MUST_MATCH = {"backend": "backend", "zero_stage": "zero_stage", "trainable": "trainable",
                     "precision": "precision", "tied": "model (its tie_word_embeddings)",
                     "vocab_size": "model (its vocabulary)", "new_token_ids": "new_token_ids / token_map",
                     "lora": "lora"}


def check_resumable(ckpt: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint written under other settings is an error here, at start, not a crash (or a
    silently different run) at the first step: the engine state only fits the run that wrote it."""
    for key, setting in RESUME_MUST_MATCH.items():
        if key == "zero_stage" and current.get("backend") != "deepspeed":
            continue                         # recorded always, used by DeepSpeed only
        if key in saved and saved[key] != current.get(key):
            was, now = saved[key], current.get(key)
            if isinstance(was, list) and isinstance(now, list):
                was, now = f"{len(was)} ids", f"{len(now)} ids"
            raise LingraftError(f"{ckpt}: written with {key}={was!r}, this run has {key}={now!r}; set {setting} "
                                "back to resume, or start a new run (another out_dir, or checkpoint.resume=false)")


def prepare_root(out_dir: Path, dist: DistInfo) -> None:
    if dist.is_main:
        root = checkpoint_root(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(root)
    barrier()

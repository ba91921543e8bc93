"""PyTorch FSDP2 (`fully_shard`): each decoder block is one shard group, the root holds the rest.

The model arrives frozen (and split for new_rows), exactly as for the other engines, as a
skeleton whose parameters each rank fills with its own shard after wrapping
(train/sharded_load.py). When only the tables train (embeddings, new_rows) the frozen body
is held in the compute dtype and sharded within a node or replicated, and only the tables
are sharded over all ranks (train/frozen_body.py); other modes shard every block over all
ranks in fp32. Under new_rows the trainable rows are a Parameter of
their own (train/split_vocab.py), so the reduce-scatter and AdamW only ever see new rows
and the old rows are a replicated buffer nobody writes to. Tied tables stay tied: the
embedding and the head both live in the root group.

On GPU parameters are all-gathered in bf16 and gradients reduced in fp32, while the
sharded master weights and the AdamW state stay fp32; on CPU everything is fp32.

Checkpoints are torch.distributed.checkpoint (DCP) folders: every rank writes its own
shards of the trainable parameters and their optimizer state (no gather on one rank),
frozen weights are left out (they come from the base model, as for ZeRO). Resuming needs
the same world size, like every engine here (train/trainer_checkpoint.py checks it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.hf_folder import open_checkpoint
from lingraft.train.backends.local_backend import LocalBackend
from lingraft.train.frozen_body import holds_frozen_body, shard_tables_only
from lingraft.train.model_parts import decoder_blocks
from lingraft.train.sharded_load import fill_meta_parameters

SCHEDULER_FILE = "scheduler.pt"
MODEL_KEY, OPTIM_KEY = "model", "optim"


def _state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    # Only what trains is saved; strict=False because the frozen keys are absent on
    # purpose (the trained names are compared explicitly in `_check_trainable`).
    return StateDictOptions(ignore_frozen_params=True, strict=False)


class FSDPBackend(LocalBackend):
    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(self.runtime.device.type, (self.dist.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=self.runtime.dtype, reduce_dtype=torch.float32)
        if holds_frozen_body(self.cfg) and any(p.requires_grad for p in model.parameters()):
            shard_tables_only(model, self.cfg, self.runtime, self.dist.world_size, policy)
        else:
            # Blocks first, then the root: the root group takes what no block claimed
            # (embedding, final norm, LM head) and keeps it gathered between forward and backward.
            for block in decoder_blocks(model):
                fully_shard(block, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
        if any(p.is_meta for p in model.parameters()):   # a skeleton (train/sharded_load.py): read our shards
            fill_meta_parameters(model, open_checkpoint(self.cfg.model, verify_checksums=False), self.runtime.device)
        return model

    @property
    def grad_average_over(self) -> int:
        return self.dist.world_size        # the reduce-scatter averages over ranks

    def autocast(self):
        return contextlib.nullcontext()   # the mixed-precision policy casts parameters itself

    def grad_norm_and_clip(self) -> float:
        from torch.distributed.tensor import DTensor
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(norm, DTensor):    # a partial norm of the local shards: reduce over ranks
            norm = norm.full_tensor()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.optim.grad_clip, norm)
        return float(norm)

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=_state_options())
        return {MODEL_KEY: model_state, OPTIM_KEY: optim_state}

    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        dcp.save(self._state(), checkpoint_id=folder)
        if self.dist.is_main:
            torch.save(self.scheduler.state_dict(), folder / SCHEDULER_FILE)

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict
        state = self._state()
        _check_trainable(folder, set(state[MODEL_KEY]))
        dcp.load(state, checkpoint_id=folder)   # in place, into this rank's shards
        set_state_dict(self.model, self.optimizer, model_state_dict=state[MODEL_KEY],
                       optim_state_dict=state[OPTIM_KEY], options=_state_options())
        self.scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))


def _saved_tensors(folder: Path) -> dict:
    """Name -> storage metadata of the model tensors in a DCP folder."""
    from torch.distributed.checkpoint import FileSystemReader
    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except (OSError, ValueError) as exc:
        raise LingraftError(f"{folder}: not an FSDP (DCP) checkpoint ({exc})") from None
    prefix = MODEL_KEY + "."
    return {key[len(prefix):]: meta for key, meta in metadata.state_dict_metadata.items() if key.startswith(prefix)}


def _check_trainable(folder: Path, expected: set[str]) -> None:
    saved = set(_saved_tensors(folder))
    if saved != expected:
        raise LingraftError(f"{folder}: checkpoint trains {sorted(saved)[:3]}..., this config trains "
                            f"{sorted(expected)[:3]}...; same `trainable` needed to resume")


def read_trainable_state(engine_dir: Path) -> dict[str, torch.Tensor]:
    """Full (unsharded) trained tensors of an FSDP checkpoint, read in one process, for export."""
    import warnings

    import torch.distributed.checkpoint as dcp
    state = {MODEL_KEY: {name: torch.empty(meta.size, dtype=meta.properties.dtype)
                         for name, meta in _saved_tensors(engine_dir).items()}}
    with warnings.catch_warnings():   # "no process group, assuming a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=engine_dir, no_dist=True)
    return state[MODEL_KEY]

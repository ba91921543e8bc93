"""`lingraft export`: a training checkpoint (ZeRO, FSDP or local) -> a Hugging Face folder.

Every backend's checkpoint holds only what trained. The export therefore starts from the
base model named in the checkpoint and writes the trained tensors over it: whole
parameters by name, and for new_rows the trained rows (``<table>.new``) into their
vocabulary positions. This also covers ZeRO-1/2, whose `zero_to_fp32` reconstruction
omits frozen weights: they are taken from the base checkpoint, bit for bit. A LoRA run's
adapters are injected into the base again (train/lora.py), loaded by name like any trained
tensor, written un-merged to <out>/adapter when `lora.keep_adapter`, then merged.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lingraft.config import OutputPath
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)

_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
           "chat_template.jinja", "vocab.json", "merges.txt", "token_map.safetensors", "head_map.safetensors")


@dataclass
class ExportConfig:
    checkpoint: Path = field(metadata={"help": "a run folder (its latest checkpoint) or one step_* folder"})
    out: OutputPath = field(metadata={"help": "output Hugging Face folder"})


def resolve_checkpoint(path: Path) -> Path:
    from lingraft.train.trainer_checkpoint import STATE_FILE, latest_checkpoint
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise LingraftError(f"{path}: neither a checkpoint (no {STATE_FILE}) nor a run folder with one")
    return latest


def read_trained(ckpt: Path, backend: str) -> dict:
    from lingraft.train.trainer_checkpoint import ENGINE_DIR
    engine = ckpt / ENGINE_DIR
    if backend == "deepspeed":
        from lingraft.train.backends.deepspeed_backend import read_trainable_state
    elif backend == "fsdp":
        from lingraft.train.backends.fsdp_backend import read_trainable_state
    else:
        from lingraft.train.backends.local_backend import read_trainable_state
    return read_trainable_state(engine)


def apply_trained(model, trained: dict, new_token_ids: list[int] | None) -> int:
    """Write trained tensors into the plain HF `model`; returns how many tensors were written."""
    import torch
    for key, value in trained.items():
        if key.endswith(".new"):
            if new_token_ids is None:
                raise LingraftError(f"export: {key} holds new rows but the checkpoint names no new_token_ids")
            table = model.get_submodule(key.removesuffix(".new")).weight
            ids = torch.tensor(new_token_ids)
            if value.shape != (len(ids), table.shape[1]):
                raise LingraftError(f"export: {key} has shape {tuple(value.shape)}, expected {(len(ids), table.shape[1])}")
            table.data[ids] = value.to(table.dtype)
        else:
            try:
                param = model.get_parameter(key)
            except AttributeError:
                raise LingraftError(f"export: the base model has no parameter {key!r}") from None
            if param.shape != value.shape:
                raise LingraftError(f"export: {key} has shape {tuple(value.shape)}, base has {tuple(param.shape)}")
            param.data.copy_(value.to(param.dtype))
    return len(trained)


def export(cfg: ExportConfig) -> Path:
    from transformers import AutoModelForCausalLM

    from lingraft.atomic import atomic_dir
    from lingraft.manifest import new_manifest
    from lingraft.train.trainer_checkpoint import STATE_FILE
    ckpt = resolve_checkpoint(Path(cfg.checkpoint))
    state = json.loads((ckpt / STATE_FILE).read_text())
    meta = state["meta"]
    base = Path(meta["base_model"])
    if not (base / "config.json").is_file():
        raise LingraftError(f"export: base model {base} (recorded in {ckpt}) is not available")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    from lingraft.train.lora import apply_lora, export_lora, lora_from_meta
    lora = lora_from_meta(meta)
    if lora is not None:   # the same adapters as in training, so the trained tensors' names exist
        apply_lora(model, lora)
    written = apply_trained(model, read_trained(ckpt, meta["backend"]), meta.get("new_token_ids"))
    with atomic_dir(cfg.out) as tmp:
        lora_metrics = export_lora(model, lora, tmp, base) if lora is not None else {}
        model.save_pretrained(tmp)
        for name in _COPIED:
            if (base / name).is_file():
                shutil.copy2(base / name, tmp / name)
        manifest = new_manifest("export", cfg)
        manifest.inputs = {"checkpoint": {"path": str(ckpt), "step": state["step"]}, "base_model": {"path": str(base)}}
        manifest.metrics = {"trained_tensors": written, "trainable": meta["trainable"], "backend": meta["backend"],
                            **lora_metrics}
        manifest.write(tmp)
    log.info("exported %s (step %d, %d trained tensors) to %s", ckpt, state["step"], written, cfg.out)
    return Path(cfg.out)


def run(cfg: ExportConfig) -> None:
    export(cfg)

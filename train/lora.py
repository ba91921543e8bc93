"""trainable=lora: peft low-rank adapters injected into the plain HF model, merged on export.

The adapters are injected in place (`peft.inject_adapter_in_model`), not through a
`PeftModel` wrapper: the model stays the transformers module every backend already
handles (`model.layers` for FSDP's shard groups, `get_input_embeddings`, gradient
checkpointing), and the trainable tensors have stable names
(`model.layers.3.self_attn.q_proj.lora_A.default.weight`), so the engines' checkpoints,
resume and `lingraft export` work by name as for every other mode. Injection happens in
`model_setup.build_model`, before DeepSpeed or FSDP build their buffers from `requires_grad`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.train.config import LoraConfig
from lingraft.train.model_parts import decoder_blocks, table_modules

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# A PeftModel's state-dict prefix; written into the adapter file so `PeftModel.from_pretrained` reads it.
PEFT_PREFIX = "base_model.model."


def resolve_layers(layers: list[int] | None, n_blocks: int) -> list[int] | None:
    """Block indexes with negative ones counted from the end, sorted, checked; None stays None (all blocks)."""
    if layers is None:
        return None
    resolved = set()
    for index in layers:
        if not -n_blocks <= index < n_blocks:
            raise LingraftError(f"lora.layers: block {index} does not exist (the model has {n_blocks} blocks)")
        resolved.add(index % n_blocks)
    return sorted(resolved)


def peft_config(cfg: LoraConfig, n_blocks: int) -> Any:
    from peft import LoraConfig as PeftLoraConfig
    layers = resolve_layers(cfg.layers, n_blocks)
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), layers_to_transform=layers,
                          layers_pattern="layers" if layers is not None else None, bias="none",
                          task_type="CAUSAL_LM")


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject the adapters into `model` (in place) and leave only them (and, with train_tables,
    the embedding and head) trainable. Adapter weights take the dtype of the model's weights,
    so an engine that holds a bf16 module (DeepSpeed) gets one dtype throughout."""
    from peft import inject_adapter_in_model
    n_blocks = len(decoder_blocks(model))
    dtype = model.get_input_embeddings().weight.dtype
    try:
        inject_adapter_in_model(peft_config(cfg, n_blocks), model)
    except ValueError as exc:   # peft's message names the modules it could not find
        raise LingraftError(f"lora.target_modules: {exc}") from None
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.data = param.data.to(dtype)
            param.requires_grad_(True)
    if cfg.train_tables:
        for table in table_modules(model):
            table.requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def adapter_state_dict(model: nn.Module, with_tables: bool) -> dict[str, torch.Tensor]:
    """The adapter as `PeftModel.save_pretrained` writes it (tables included when they trained)."""
    from peft import get_peft_model_state_dict
    state = get_peft_model_state_dict(model, save_embedding_layers=with_tables)
    # Tied tables share storage, which safetensors refuses: each entry gets its own copy.
    return {PEFT_PREFIX + key: value.detach().to("cpu").clone().contiguous() for key, value in state.items()}


def write_adapter(model: nn.Module, cfg: LoraConfig, folder: Path, base_model: Path) -> Path:
    """An un-merged peft adapter folder (adapter_config.json + adapter_model.safetensors):
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), folder)`."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config(cfg, len(decoder_blocks(model)))
    config.base_model_name_or_path = str(base_model)
    config.save_pretrained(str(folder))
    save_file(adapter_state_dict(model, cfg.train_tables), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return folder


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight (W += B A * alpha / r) and put the plain layer
    back, leaving an ordinary transformers model; returns how many layers were merged."""
    merged = lora_layers(model)
    for name, module in merged:
        module.merge(safe_merge=True)   # raises on NaN/inf instead of writing them into the weights
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return len(merged)


def lora_from_meta(meta: dict[str, Any]) -> LoraConfig | None:
    """The run's LoRA settings as recorded in its checkpoint (None for other modes)."""
    return LoraConfig(**meta["lora"]) if meta.get("lora") else None


def export_lora(model: nn.Module, cfg: LoraConfig, out: Path, base_model: Path) -> dict[str, Any]:
    """Export step for a LoRA run, trained tensors already loaded: write the un-merged adapter
    (if kept) to <out>/adapter, then merge. Returns the manifest's numbers."""
    if cfg.keep_adapter:
        write_adapter(model, cfg, out / ADAPTER_DIR, base_model)
    return {"lora_layers_merged": merge_lora(model), "adapter": ADAPTER_DIR if cfg.keep_adapter else None}

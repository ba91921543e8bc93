"""Where the parts of a Hugging Face causal LM live: its tables, its decoder blocks, a named module.

A leaf module (torch only): set-up, LoRA, FSDP wrapping and the loop all ask these
questions, so none of them has to import another to find a model's blocks.
"""
from __future__ import annotations

import difflib

from torch import nn

from lingraft.errors import LingraftError


def table_modules(model: nn.Module) -> list[nn.Module]:
    head = model.get_output_embeddings()
    return [model.get_input_embeddings(), *([head] if head is not None else [])]


def named_modules(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The modules called `names`; an unknown name is an error naming the closest real one."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LingraftError(f"trainable_modules: no module named {name!r}{hint}")
        found.append(modules[name])
    return found


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise LingraftError(f"{type(model).__name__}: cannot find the decoder blocks (expected model.layers)")
    return list(layers)

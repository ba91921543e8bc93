"""What an architecture's causal-LM class does to `head(hidden)` before it returns the logits.

A Hydra model runs the architecture's body and applies its own heads, so any scaling or
soft-capping that the architecture's `*ForCausalLM.forward` does after the LM head must be done
here too, or every probability (and sampling) differs from the plain model's: Cohere multiplies
by `logit_scale`, Gemma-2/3 soft-cap at `final_logit_softcapping`, Granite divides by
`logits_scaling`. Architectures not listed here are refused rather than silently wrong; each
listed one is checked against the plain model in tests/integration/test_hydra.py.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from lingraft.errors import LingraftError

LogitTransform = Callable[[torch.Tensor], torch.Tensor]

# Causal-LM classes that return head(hidden) unchanged.
PLAIN = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"})
SCALED = frozenset({"cohere", "cohere2"})                  # logits * config.logit_scale
SOFT_CAPPED = frozenset({"gemma2", "gemma3_text"})         # cap * tanh(logits / cap), cap = final_logit_softcapping
DIVIDED = frozenset({"granite", "granitemoe"})             # logits / config.logits_scaling
SUPPORTED = PLAIN | SCALED | SOFT_CAPPED | DIVIDED
_SETTING = {**dict.fromkeys(SCALED, "logit_scale"), **dict.fromkeys(SOFT_CAPPED, "final_logit_softcapping"),
            **dict.fromkeys(DIVIDED, "logits_scaling")}


def logit_settings(config: Any, where: str) -> dict[str, Any]:
    """The architecture and the config value its post-head step reads; refuses unsupported ones.
    `config` is a transformers config object, so values left at their defaults are filled in."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise LingraftError(f"{where}: Hydra models do not support model_type={model_type!r}: its causal-LM class "
                            f"may scale or cap the logits in a way not reproduced here (supported: "
                            f"{', '.join(sorted(SUPPORTED))})")
    setting = _SETTING.get(model_type)
    return {"model_type": model_type, **({setting: getattr(config, setting)} if setting else {})}


def logit_transform(config: Any, where: str) -> LogitTransform:
    """The post-head step of `config`'s architecture, with the same operations in the same order."""
    settings = logit_settings(config, where)
    model_type = settings["model_type"]
    if model_type in SCALED:
        scale = settings["logit_scale"]
        return lambda logits: logits * scale
    if model_type in SOFT_CAPPED and settings["final_logit_softcapping"] is not None:
        cap = settings["final_logit_softcapping"]
        return lambda logits: torch.tanh(logits / cap) * cap
    if model_type in DIVIDED:
        scaling = settings["logits_scaling"]
        return lambda logits: logits / scaling
    return lambda logits: logits

"""Can A's vocabulary be propagated into I? Checked on configs before anything is read or written."""
from __future__ import annotations

from typing import Any

from lingraft.errors import LingraftError

# (what, attribute of a transformers config); transformers maps family-specific names
# (GPT-2's n_embd, n_layer) onto these attributes.
_MUST_MATCH = (("architecture", "model_type"), ("architectures", "architectures"),
               ("hidden size", "hidden_size"), ("layer count", "num_hidden_layers"),
               ("tied embeddings", "tie_word_embeddings"))


def check_compatible(base: Any, adapted: Any, instruct: Any, names: tuple[str, str, str]) -> None:
    """Raise one error listing every mismatch: B vs I on architecture, hidden size, layer count
    and tied-ness; A vs B on architecture and hidden size. `names` are the three models' paths.

    A's tied-ness may differ from B's: an untied A (a head learnt apart from the inputs) gives
    an untied output; a tied A's table serves as both of an untied I's tables."""
    b_name, a_name, i_name = names
    problems = []
    for what, attr in _MUST_MATCH:
        b_value, i_value = getattr(base, attr, None), getattr(instruct, attr, None)
        if b_value != i_value:
            problems.append(f"{what}: base {b_value!r} vs instruct {i_value!r}")
    if getattr(adapted, "model_type", None) != getattr(base, "model_type", None):
        problems.append(f"architecture: base {getattr(base, 'model_type', None)!r} vs adapted "
                        f"{getattr(adapted, 'model_type', None)!r}")
    if getattr(adapted, "hidden_size", None) != getattr(base, "hidden_size", None):
        problems.append(f"hidden size: base {getattr(base, 'hidden_size', None)!r} vs adapted "
                        f"{getattr(adapted, 'hidden_size', None)!r}")
    if problems:
        raise LingraftError(f"cannot propagate {a_name} into {i_name} (base {b_name}): " + "; ".join(problems))


def load_config(folder: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise LingraftError(f"{folder}: cannot read the model config ({str(exc).splitlines()[0][:200]})") from None

"""The fitted head map (distill_math.HeadMap) stored next to the model whose head rows it made.

`lingraft init --method distill` and `lingraft fit-head` write ``head_map.safetensors``: the
shared maps, the shift and the per-token offsets that turned each learnt token's features
(first-piece row, mean row, own input row) into its head row. It is the output rows'
provenance, as the token map is the input rows', and it lets a later fit start where this one
ended (`fit-head`'s warm start) instead of from the first-piece rows. Never pickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lingraft.errors import LingraftError

HEAD_MAP_NAME = "head_map.safetensors"
FORMAT = "lingraft.head_map/1"
META_KEY = "lingraft"
_IDS = "token_ids"   # the learnt tokens' ids, in the offsets' order


def save_head_map(state: dict[str, torch.Tensor], token_ids: torch.Tensor, path: Path) -> Path:
    """Write the map's parameters and the ids of the tokens it covers (atomically)."""
    from safetensors.torch import save_file

    from lingraft.atomic import atomic_path
    if _IDS in state:
        raise LingraftError(f"head map: parameter name {_IDS!r} is reserved")
    if state["offset"].shape[0] != token_ids.numel():
        raise LingraftError(f"head map: {state['offset'].shape[0]} offsets for {token_ids.numel()} tokens")
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in state.items()}
    tensors[_IDS] = token_ids.detach().to(torch.int64).cpu().contiguous()
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps({"format": FORMAT})})
    return Path(path)


def load_head_map(path: Path, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The map's parameters, refused unless it covers exactly `token_ids` (the model's learnt rows)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
            if meta.get("format") != FORMAT:
                raise LingraftError(f"{path}: not a lingraft head map (format {meta.get('format')!r})")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except FileNotFoundError:
        raise LingraftError(f"{path}: head map not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise LingraftError(f"{path}: corrupt head map ({exc})") from None
    stored = tensors.pop(_IDS, None)
    if stored is None or not torch.equal(stored, token_ids.detach().to(torch.int64).cpu()):
        raise LingraftError(f"{path}: the head map covers other tokens than the model's learnt rows "
                            f"({0 if stored is None else stored.numel()} against {token_ids.numel()})")
    return tensors

"""``vocab_map.json``: which base id each token of an Extended or Optimized tokenizer had.

`extend` and `optimize` decide it while they build the variant and write it next to the
tokenizer; everything that needs "which old row does new id i come from" (`init`'s token
maps, trans-tokenization's kept rows) reads it from there instead of guessing again from the
tokens' text. Guessing is ambiguous: a SentencePiece base has both ``a`` and ``<0x61>`` for
the byte 0x61, and an Optimized vocabulary re-numbers every id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lingraft.atomic import write_json
from lingraft.errors import LingraftError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

VOCAB_MAP_NAME = "vocab_map.json"
VOCAB_MAP_FORMAT = "lingraft.vocab_map/1"


def write_vocab_map(folder: Path, old_vocab_size: int, old_id_of_new_id: list[int]) -> None:
    write_json(folder / VOCAB_MAP_NAME, {"format": VOCAB_MAP_FORMAT, "old_vocab_size": old_vocab_size,
                                         "new_vocab_size": len(old_id_of_new_id),
                                         "old_id_of_new_id": old_id_of_new_id})


def read_vocab_map(folder: str | Path) -> list[int]:
    """``old_id_of_new_id`` of a variant folder: the base id each token had, -1 for new tokens."""
    path = Path(folder) / VOCAB_MAP_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LingraftError(f"{path}: no vocabulary map (not an extend/optimize output?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LingraftError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != VOCAB_MAP_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise LingraftError(f"{path}: unknown format {found!r}, expected {VOCAB_MAP_FORMAT!r}")
    ids = data.get("old_id_of_new_id")
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= -1 for i in ids):
        raise LingraftError(f"{path}: old_id_of_new_id must be a list of ids (-1 for a new token)")
    return ids


def stored_vocab_map(spec: str | Path, old: "PreTrainedTokenizerFast",
                     new: "PreTrainedTokenizerFast") -> list[int] | None:
    """The vocab map stored with the tokenizer `spec` (a folder), checked against `old` and `new`:
    None when there is none; an error when it belongs to another base tokenizer."""
    folder = Path(spec)
    if folder.name == "tokenizer.json":     # a variant folder's tokenizer file, named directly
        folder = folder.parent
    if not (folder / VOCAB_MAP_NAME).is_file():
        return None
    ids = read_vocab_map(folder)
    where = folder / VOCAB_MAP_NAME
    if len(ids) > len(new) or any(i >= len(old) for i in ids):
        raise LingraftError(f"{where}: maps {len(ids)} tokens onto ids up to {max(ids, default=-1)}, but the "
                            f"tokenizers have {len(new)} (new) and {len(old)} (old) tokens; it belongs to "
                            f"another base")
    mapped = [i for i, o in enumerate(ids) if o >= 0]
    new_tokens = new.convert_ids_to_tokens(mapped)
    old_tokens = old.convert_ids_to_tokens([ids[i] for i in mapped])
    wrong = next(((i, a, b) for i, a, b in zip(mapped, new_tokens, old_tokens) if a != b), None)
    if wrong is not None:
        i, a, b = wrong
        raise LingraftError(f"{where}: new id {i} ({a!r}) is mapped to old id {ids[i]}, which the old tokenizer "
                            f"calls {b!r}; the map was made for another base tokenizer")
    return ids

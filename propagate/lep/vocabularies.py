"""Which rows correspond across the three vocabularies of a propagation.

B and I share the old vocabulary; A has the new one. Propagation needs: proof that I really
is B's sibling (same ids for the same pieces), the tokens old and new share (overlap), the
new-from-old token map (conversion), and the output tokenizer: A's, plus every added token
and the chat template of I, whose rows come from I.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap
from lingraft.vocabulary.token_matching import adopt_special_tokens, build_mean_map, bytes_index, describe_vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)


def check_siblings(base: "PreTrainedTokenizerFast", instruct: "PreTrainedTokenizerFast", where: str) -> None:
    """I must give every subword piece of B the same id, or rows of B and I are not comparable."""
    b_vocab = base.backend_tokenizer.get_vocab(with_added_tokens=False)
    i_vocab = instruct.backend_tokenizer.get_vocab(with_added_tokens=False)
    differ = [piece for piece, i in b_vocab.items() if i_vocab.get(piece) != i]
    if differ:
        raise LingraftError(f"{where}: the instruct tokenizer differs from the base's ({len(differ)} of "
                            f"{len(b_vocab)} pieces have other ids, e.g. {differ[0]!r}); I is not B's sibling")


def shared_tokens(old: "PreTrainedTokenizerFast", new: "PreTrainedTokenizerFast") -> tuple[torch.Tensor, torch.Tensor]:
    """(new ids, old ids) of the subword tokens both vocabularies hold, matched by the text they
    stand for (so SentencePiece ``▁x`` and byte-level ``Ġx`` match)."""
    old_index = bytes_index(describe_vocabulary(old))
    new_vocab = describe_vocabulary(new)
    pairs = sorted((i, old_index[text]) for i, text in new_vocab.piece_bytes.items()
                   if i not in new_vocab.byte_fallback and text in old_index)
    if not pairs:
        raise LingraftError("overlap: the old and new vocabularies share no token")
    new_ids, old_ids = zip(*pairs)
    return torch.tensor(new_ids), torch.tensor(old_ids)


@dataclass(frozen=True)
class OutputVocabulary:
    tokenizer: "PreTrainedTokenizerFast"     # A's tokenizer with I's added tokens and chat template
    instruct_rows: dict[int, int]            # output id -> I id, for every added token of I
    carried: list[str]                       # I's added tokens A lacked (appended to the vocabulary)


def output_vocabulary(adapted: str | Path, instruct: "PreTrainedTokenizerFast",
                      trust_remote_code: bool = False) -> OutputVocabulary:
    tok = load_tokenizer(adapted, trust_remote_code)
    carried = adopt_special_tokens(tok, instruct)
    vocab = tok.get_vocab()
    rows = {vocab[t.content]: i for i, t in instruct.added_tokens_decoder.items()}
    return OutputVocabulary(tokenizer=tok, instruct_rows=rows, carried=carried)


@dataclass(frozen=True)
class ResolvedTokenMap:
    token_map: TokenMap
    source: str          # where it came from, for the manifest


def resolve_token_map(explicit: str | None, adapted: Path, base: "PreTrainedTokenizerFast",
                      new: "PreTrainedTokenizerFast") -> ResolvedTokenMap:
    """Conversion's T: --token-map, else A's own, else the one of the model A was exported from,
    else rebuilt as the mean of old pieces (what `lingraft init --method mean` stores)."""
    candidates = [Path(explicit)] if explicit else [adapted / TOKEN_MAP_NAME, *_exported_from(adapted)]
    for path in candidates:
        if path.exists():
            found = ResolvedTokenMap(TokenMap.load(path), str(path))
            break
    else:
        if explicit:
            raise LingraftError(f"{explicit}: token map not found")
        log.info("no token map stored with %s; rebuilding it as the mean of old pieces", adapted)
        found = ResolvedTokenMap(build_mean_map(base, new), "rebuilt: mean of old pieces")
    t = found.token_map
    if (t.new_vocab, t.old_vocab) != (len(new), len(base)):
        raise LingraftError(f"{found.source}: token map is {t.new_vocab}x{t.old_vocab} (new x old) but the "
                            f"adapted and base tokenizers have {len(new)} and {len(base)} tokens")
    return found


def _exported_from(adapted: Path) -> list[Path]:
    """A training export records its base model; an older export may not have copied the map."""
    manifest = adapted / "manifest.json"
    if not manifest.is_file():
        return []
    try:
        base = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", {}).get("base_model", {}).get("path")
    except (json.JSONDecodeError, AttributeError):
        raise LingraftError(f"{manifest}: corrupt manifest") from None
    return [Path(base) / TOKEN_MAP_NAME] if base else []

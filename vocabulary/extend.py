"""`lingraft tokenizer extend`: the LEP *Extended* vocabulary.

The Extended tokenizer is the base tokenizer with new-language tokens appended after all of
its ids, added and special tokens included (for Llama-3 the first new token is 128256).
Old tokens keep their ids, so the old embedding rows can be copied as they are.

Merge rule. The base merges keep their ranks. The new tokens are the new tokenizer's
merge results that the base lacks (it is trained with the base's normalizer and
pre-tokenizer, so both speak the same symbols), taken in the new tokenizer's rank order,
each with the tokens its merge path needs, until `add` are taken. Every new token t gets
one merge per way of writing t = a + b with a and b in the combined vocabulary (this is how
the converted Llama-3 and SentencePiece BPEs list their own merges, and it lets t fire on
the base's segmentation, which rarely splits t where the new tokenizer did), ranked after
every base merge, in the order the tokens were taken. No new merge produces a base token.
Because every new merge ranks after every base merge, BPE first encodes a pre-token
exactly as the base does and only then applies new merges:
extended(word) = apply_new_merges(base(word)).

English (or any text to protect) therefore keeps its exact ids when no new merge fires on
its base encoding. Given a `protect` corpus, we encode it with the base and refuse every
new merge whose pair occurs adjacent inside one base-encoded pre-token, and, for BPEs with
``ignore_merges`` (Llama-3), every new token that spells a whole protected pre-token. The
protected text then encodes to the same ids by construction; unseen text of the protected
language changes only where it holds a pair the protected corpus did not (`reencoded_words`
measures how often).

Without a `protect` corpus the new-token rule of `vocabulary.token_rules` does the same job
for every text without a letter of the new language: each new token must hold such a letter
(and obey the base's digit and whitespace splits), so English prose, numbers and code keep
the base's ids; whitespace, digit and punctuation runs (``ĊĠĠĠ``, ``00``) are never added.

The output folder holds the tokenizer (AutoTokenizer loads it; special tokens, added
tokens and chat template kept), ``vocab_map.json`` (``old_id_of_new_id``: the identity for
old ids, -1 for new tokens) and ``manifest.json``.
"""
from __future__ import annotations

import json
import re
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.manifest import Manifest, new_manifest
from lingraft.vocabulary.bpe_surgery import Pair, assemble, bpe_model, merge_list, old_token_ids, plan_extension
from lingraft.vocabulary.corpus import CorpusText
from lingraft.vocabulary.loading import backend_json, load_tokenizer, tokenizer_fingerprint, tokenizer_kind
from lingraft.vocabulary.token_rules import NewTokenRule, new_token_rule
from lingraft.vocabulary.training import TrainParams, base_pipeline, train_tokenizer
from lingraft.vocabulary.variants_config import ExtendConfig, NewVocabSource
from lingraft.vocabulary.vocab_map import VOCAB_MAP_NAME, write_vocab_map

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)

_BATCH = 64
_WORD = re.compile(r"\S+")


@dataclass
class Variant:
    tokenizer: "PreTrainedTokenizerFast"
    old_id_of_new_id: list[int]
    counts: dict[str, Any]      # what was kept, added and refused: goes into the manifest's metrics


# -- the new tokenizer ------------------------------------------------------------------

def new_merges(base_json: dict[str, Any], new: "PreTrainedTokenizerFast") -> list[Pair]:
    """The new tokenizer's merges, after checking they apply to the base's symbols."""
    bpe_model(base_json, role="base")
    new_json = backend_json(new)
    bpe_model(new_json, role="new")
    for part in ("normalizer", "pre_tokenizer"):
        if new_json.get(part) != base_json.get(part):
            raise LingraftError(f"new tokenizer's {part} differs from the base's, so its merges do not apply to "
                                f"the base's symbols; train it with the base's pipeline (`like: base`)")
    return merge_list(new_json["model"])


def rule_for(base_json: dict[str, Any], merges: list[Pair], scripts: list[str],
             keep_base: bool = False) -> NewTokenRule:
    """The new-token rule of `vocabulary.token_rules` for extending `base_json` with `merges`;
    `keep_base`: base tokens are always allowed back (Optimized re-adds dropped ones)."""
    vocab = old_token_ids(base_json)
    candidates = [a + b for a, b in merges if a + b not in vocab]
    byte_level = tokenizer_kind(base_json).startswith("byte_level")
    return new_token_rule(base_json, byte_level, candidates, scripts, vocab if keep_base else ())


def resolve_new_tokenizer(cfg: NewVocabSource, base: "PreTrainedTokenizerFast") -> "PreTrainedTokenizerFast":
    """Load `cfg.new`, or train a BPE on `cfg.data` with the base's pipeline (`like: base`)."""
    if cfg.new is not None:
        return load_tokenizer(cfg.new)
    corpus = CorpusText(cfg.data, cfg.text_field, cfg.max_chars, desc="new-tokenizer corpus")
    started = time.time()
    tok = train_tokenizer(corpus, base_pipeline(base, []), TrainParams("bpe", cfg.new_vocab_size))
    log.info("trained a %d-token BPE like the base on %d chars in %.1fs", len(tok), corpus.chars,
             time.time() - started)
    return tok


# -- protection and its measurement -------------------------------------------------------

def batches(texts: Iterable[str], size: int = _BATCH) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


def _pre_tokens(encoding: Any) -> Iterator[list[str]]:
    """The tokens of each pre-token of one `tokenizers` Encoding; added tokens are skipped."""
    tokens, words = encoding.tokens, encoding.word_ids
    start = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or words[i] != words[start]:
            if words[start] is not None:
                yield tokens[start:i]
            start = i


def protected_constraints(base: "PreTrainedTokenizerFast", texts: Iterable[str],
                          ignore_merges: bool) -> tuple[set[Pair], set[str]]:
    """Adjacent token pairs inside base-encoded pre-tokens of `texts`, and (for BPEs with
    `ignore_merges`, which emit a whole pre-token found in the vocabulary) the multi-token
    pre-tokens themselves, spelled in model symbols."""
    pairs: set[Pair] = set()
    words: set[str] = set()
    for batch in progress(batches(texts), desc="protect", unit="batch"):
        for enc in base.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
            for tokens in _pre_tokens(enc):
                pairs.update(zip(tokens, tokens[1:]))
                if ignore_merges and len(tokens) > 1:
                    words.add("".join(tokens))
    return pairs, words


def reencoded_words(base: "PreTrainedTokenizerFast", variant: "PreTrainedTokenizerFast", first_new_id: int,
                    texts: Iterable[str]) -> dict[str, float]:
    """How much of `texts` an Extended variant encodes differently from its base: documents
    whose ids differ, and whitespace-separated words touched by a new token (id >= `first_new_id`).

    Exact for Extended, whose output is the base's with runs merged into new tokens; words are
    whitespace-separated so the rate means the same for pre-tokenizers that split words and
    for SentencePiece ones that do not.
    """
    words = changed = docs = changed_docs = 0
    for batch in batches(texts):
        old = base.backend_tokenizer.encode_batch(batch, add_special_tokens=False)
        new = variant.backend_tokenizer.encode_batch(batch, add_special_tokens=False)
        for text, a, b in zip(batch, old, new):
            docs += 1
            changed_docs += a.ids != b.ids
            spans = [m.span() for m in _WORD.finditer(text)]
            starts = [s for s, _ in spans]
            touched: set[int] = set()
            for token_id, (s, e) in zip(b.ids, b.offsets):
                if token_id >= first_new_id:
                    first = bisect_right(starts, s) - 1
                    if first < 0 or spans[first][1] <= s:
                        first += 1
                    touched.update(range(first, bisect_left(starts, e)))
            words += len(spans)
            changed += len(touched)
    return {"docs": docs, "changed_docs": changed_docs, "words": words, "changed_words": changed,
            "changed_word_rate": changed / words if words else 0.0}


# -- building -------------------------------------------------------------------------

def rebuild_like(base: "PreTrainedTokenizerFast", tok_json: dict[str, Any]) -> "PreTrainedTokenizerFast":
    """A transformers tokenizer over `tok_json` with the base's special tokens, chat template
    and wrapper settings (BOS/EOS insertion, lengths, padding side)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer.from_str(json.dumps(tok_json, ensure_ascii=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **base_pipeline(base, []).wrapper_kwargs)


def extend(base: "PreTrainedTokenizerFast", new: "PreTrainedTokenizerFast", add: int | None = None,
           protect_texts: Iterable[str] = (), new_scripts: list[str] = ()) -> Variant:
    """The Extended variant of `base` with up to `add` tokens of `new` (see the module docstring);
    `new_scripts`: the new language's scripts (default: inferred from `new`)."""
    base_json = backend_json(base)
    merges = new_merges(base_json, new)
    rule = rule_for(base_json, merges, list(new_scripts))
    pairs, words = protected_constraints(base, protect_texts, bool(base_json["model"].get("ignore_merges")))
    plan = plan_extension(old_token_ids(base_json), merges, add, protected_pairs=pairs, protected_words=words,
                          refusal=rule.refusal)
    if add is not None and len(plan.tokens) < add:
        log.warning("only %d of the %d requested new tokens could be added (%d refused by protection, %d "
                    "unbuildable; the rest the base has)", len(plan.tokens), add, plan.rejected_by_protect,
                    plan.unbuildable)
    tok_json, old_ids = assemble(base_json, plan.tokens, plan.merges)
    counts = {"base_tokens": len(old_ids) - len(plan.tokens), "added": len(plan.tokens),
              "new_merges": len(plan.merges), "rejected_by_protect": plan.rejected_by_protect,
              "already_in_base": plan.already_in_base, "unbuildable": plan.unbuildable,
              "refused_by_rule": plan.refused_by_rule, "new_scripts": sorted(rule.scripts),
              "protected_pairs": len(pairs), "vocab_size": len(old_ids)}
    return Variant(rebuild_like(base, tok_json), old_ids, counts)


# -- output ---------------------------------------------------------------------------

def write_variant(out: Path, variant: Variant, manifest: Manifest, base: "PreTrainedTokenizerFast",
                  new: "PreTrainedTokenizerFast", started: float) -> None:
    """The tokenizer folder with vocab_map.json and manifest.json, all appearing at once."""
    manifest.outputs = {"tokenizer": str(out), "vocab_map": str(out / VOCAB_MAP_NAME)}
    manifest.metrics = {"base_fingerprint": tokenizer_fingerprint(base), "new_fingerprint": tokenizer_fingerprint(new),
                        "variant_fingerprint": tokenizer_fingerprint(variant.tokenizer), **variant.counts,
                        "seconds": round(time.time() - started, 2)}
    with atomic_dir(out) as tmp:
        variant.tokenizer.save_pretrained(str(tmp))
        write_vocab_map(tmp, len(base), variant.old_id_of_new_id)
        manifest.write(tmp)


def source_inputs(cfg: NewVocabSource) -> dict[str, str]:
    inputs = {"base": cfg.base, **({"new": cfg.new} if cfg.new else {})}
    inputs.update({f"data[{i}]": p for i, p in enumerate(cfg.data)})
    return inputs


def run_extend(cfg: ExtendConfig) -> Variant:
    started = time.time()
    base = load_tokenizer(cfg.base)
    new = resolve_new_tokenizer(cfg, base)
    protect = CorpusText(cfg.protect, cfg.text_field, desc="protected corpus")
    variant = extend(base, new, cfg.add, protect, cfg.new_scripts)
    inputs = {**source_inputs(cfg), **{f"protect[{i}]": p for i, p in enumerate(cfg.protect)}}
    write_variant(cfg.out, variant, new_manifest("tokenizer.extend", cfg, inputs), base, new, started)
    log.info("extended %s: %s -> %s (%.1fs)", cfg.base, json.dumps(variant.counts), cfg.out, time.time() - started)
    return variant

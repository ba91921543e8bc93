"""`lingraft tokenizer optimize`: the LEP *Optimized* vocabulary.

The base shrunk to the `keep` tokens it uses most on the target-language corpus, then
extended with the `add` new-language tokens used most on the same corpus.

Shrinking keeps the BPE consistent. Always kept: every atom (the 256 byte symbols of a
byte-level BPE; the ``<0xNN>`` byte-fallback pieces and single characters of a
SentencePiece BPE), so any text still encodes; every added/special token, on top of
`keep`; and every token the chat template, the special and the added tokens produce
(Llama-3's generation prompt needs ``assistant`` and ``ĊĊ``), counted in `keep`, so prompts
encode exactly as the instruct model was trained on them. Base tokens are then taken by
usage, each with its closure (the parts of the merge that builds it, recursively), while
they fit; so exactly `keep` base model tokens stay and each is reachable by merges. A base merge
survives iff its two parts and its result all stay. Kept tokens are re-numbered compactly in
their old order, added tokens included
(Mistral's ``<unk> <s> </s>`` stay 0-2; Llama-3's specials follow the kept model tokens).

Extension follows the rule of `vocabulary.extend`, with candidates ordered by how often
the new tokenizer uses them on the corpus (then by its merge rank). A base token that the
shrink dropped can come back this way as one of the `add` new tokens;
``vocab_map.json`` then gives its old id like any kept token's, so its embedding is copied.
"""
from __future__ import annotations

import time
from itertools import product
from typing import TYPE_CHECKING, Iterable

import numpy as np

from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.manifest import new_manifest
from lingraft.vocabulary.bpe_surgery import assemble, old_token_ids, plan_extension, plan_shrink
from lingraft.vocabulary.corpus import CorpusText
from lingraft.vocabulary.extend import (Variant, batches, new_merges, rebuild_like, resolve_new_tokenizer, rule_for,
                                        source_inputs, write_variant)
from lingraft.vocabulary.loading import backend_json, load_tokenizer
from lingraft.vocabulary.variants_config import OptimizeConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)


def usage_counts(tokenizers: list["PreTrainedTokenizerFast"], texts: Iterable[str]) -> list[np.ndarray]:
    """How often each tokenizer emits each id on `texts` (one pass over the texts)."""
    counts = [np.zeros(max(t.get_vocab().values()) + 1, dtype=np.int64) for t in tokenizers]
    for batch in progress(batches(texts), desc="counting token use", unit="batch"):
        for tok, count in zip(tokenizers, counts):
            for enc in tok.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
                count += np.bincount(np.asarray(enc.ids, dtype=np.int64), minlength=count.size)
    return counts


def by_usage(tok: "PreTrainedTokenizerFast", count: np.ndarray) -> list[str]:
    """Tokens used at least once, most used first (ties: lower id first)."""
    used = np.flatnonzero(count)
    ranked = used[np.lexsort((used, -count[used]))]
    return [t for t in tok.convert_ids_to_tokens(ranked.tolist()) if t is not None]


# Conversation shapes to render the chat template with: templates refuse some (no system role,
# strict alternation), and each shape may spell other text (system headers, generation prompt).
_CHATS = (("user",), ("user", "assistant"), ("system", "user", "assistant", "user"))


def template_tokens(base: "PreTrainedTokenizerFast") -> set[str]:
    """Base tokens that the chat template (every shape of `_CHATS`, with and without the generation
    prompt, empty and one-letter contents), the special tokens and the added tokens encode to."""
    texts = [str(t) for t in base.all_special_tokens] + [t.content for t in base.added_tokens_decoder.values()]
    rendered, failure = 0, ""
    for roles, prompt, content in product(_CHATS if base.chat_template else (), (True, False), ("", "x")):
        messages = [{"role": role, "content": content} for role in roles]
        try:
            texts.append(base.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))
            rendered += 1
        except Exception as exc:  # noqa: BLE001 - a template's raise_exception rejects this shape only
            failure = f"{type(exc).__name__}: {exc}"
    if base.chat_template and not rendered:
        raise LingraftError(f"base chat template: renders no conversation ({failure}), so the tokens it needs "
                            f"cannot be kept")
    tokens = set()
    for enc in base.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        tokens.update(enc.tokens)
    return tokens


def optimize(base: "PreTrainedTokenizerFast", new: "PreTrainedTokenizerFast", texts: Iterable[str],
             keep: int, add: int, new_scripts: list[str] = ()) -> Variant:
    """The Optimized variant of `base`: `keep` base tokens and `add` tokens of `new` (module docstring)."""
    base_json = backend_json(base)
    merges = new_merges(base_json, new)
    rule = rule_for(base_json, merges, list(new_scripts), keep_base=True)
    base_count, new_count = usage_counts([base, new], texts)
    kept = plan_shrink(base_json, keep, by_usage(base, base_count), required=template_tokens(base))
    old_ids = old_token_ids(base_json)
    kept_ids = {t: old_ids[t] for t in kept}
    order = [*by_usage(new, new_count), *(a + b for a, b in merges)]
    plan = plan_extension(kept_ids, merges, add, order=order, refusal=rule.refusal)
    if len(plan.tokens) < add:
        log.warning("only %d of the %d requested new tokens could be added (the new tokenizer offers no more "
                    "that the kept base lacks; train it with a larger vocabulary)", len(plan.tokens), add)
    tok_json, old_id_of_new_id = assemble(base_json, plan.tokens, plan.merges, keep=kept)
    re_added = sum(old_id_of_new_id[i] >= 0 for i in range(len(kept), len(old_id_of_new_id)))
    counts = {"kept_base": keep, "kept_added_tokens": len(kept) - keep, "dropped": len(old_ids) - len(kept),
              "added": len(plan.tokens), "re_added_base": re_added, "new_merges": len(plan.merges),
              "unbuildable": plan.unbuildable, "refused_by_rule": plan.refused_by_rule,
              "new_scripts": sorted(rule.scripts), "vocab_size": len(old_id_of_new_id),
              "corpus_base_tokens": int(base_count.sum()), "corpus_new_tokens": int(new_count.sum())}
    return Variant(rebuild_like(base, tok_json), old_id_of_new_id, counts)


def run_optimize(cfg: OptimizeConfig) -> Variant:
    started = time.time()
    base = load_tokenizer(cfg.base)
    new = resolve_new_tokenizer(cfg, base)
    corpus = CorpusText(cfg.data, cfg.text_field, cfg.max_chars, desc="target corpus")
    variant = optimize(base, new, corpus, cfg.keep, cfg.add, cfg.new_scripts)
    variant.counts["corpus"] = corpus.summary()
    write_variant(cfg.out, variant, new_manifest("tokenizer.optimize", cfg, source_inputs(cfg)), base, new, started)
    log.info("optimized %s: %d base + %d new tokens -> %s (%.1fs)", cfg.base, cfg.keep, variant.counts["added"],
              cfg.out, time.time() - started)
    return variant

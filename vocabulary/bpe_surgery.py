"""Surgery on a `tokenizers` BPE model: grow it with another BPE's merges, or shrink it.

Everything here is a pure function over the parsed tokenizer JSON (plain dicts and lists);
loading, encoding corpora and writing folders live in `vocabulary.extend` and
`vocabulary.optimize`.

Terms used throughout:

* *old tokens*: every token of the base with an id: the BPE model's vocabulary plus the
  added/special tokens (Llama-3's 128000-128255 live only in ``added_tokens``).
* *atoms*: model tokens that no merge produces: the 256 byte symbols of a byte-level BPE,
  the ``<0xNN>`` byte-fallback pieces and single characters of a SentencePiece BPE, and
  control pieces such as ``<unk>``. A BPE cannot rebuild them, so they are always kept.
* *producer* of a token: the lowest-ranked merge that yields it. Converted tokenizers
  (tiktoken, SentencePiece) list several merges per token; the producer is the one BPE
  would use first, and closure follows it.
* *closure* of a token: the token plus, recursively, the parts of its producer that a
  vocabulary lacks. Keeping a closed set keeps every kept token reachable by merges.

Layout of a variant: old tokens first (at their old ids for Extended; re-numbered compactly
in their old order for Optimized), then the new tokens, in the order they were chosen.
Added tokens whose id is not in the model vocabulary are written into it too, because
`tokenizers` re-assigns added-token ids past ``len(model.vocab)`` otherwise; they stay
unreachable by merges and are matched by the added-token pass before BPE runs, as before.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from lingraft.errors import LingraftError

Pair = tuple[str, str]


def bpe_model(tok_json: Mapping[str, Any], role: str = "base") -> Mapping[str, Any]:
    """The BPE model section, or a clear error for a model this surgery cannot handle."""
    model = tok_json.get("model") or {}
    kind = model.get("type")
    if kind != "BPE":
        raise LingraftError(f"{role} tokenizer is a {kind} model; vocabulary extension and optimisation need a "
                            f"BPE tokenizer (byte-level like Llama-3/GPT-2, or SentencePiece BPE like Mistral)")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise LingraftError(f"{role} tokenizer: BPE with {option}={model[option]!r} is not supported "
                                f"(merge results are not plain concatenations)")
    return model


def merge_list(model: Mapping[str, Any]) -> list[Pair]:
    """Merges in rank order as pairs (tokenizers writes ``[a, b]``; older files ``"a b"``)."""
    merges = []
    for m in model.get("merges", []):
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
            if not sep:
                raise LingraftError(f"malformed merge {m!r} in tokenizer JSON")
            merges.append((a, b))
        else:
            a, b = m
            merges.append((a, b))
    return merges


def old_token_ids(tok_json: Mapping[str, Any]) -> dict[str, int]:
    """Every old token (model vocabulary and added tokens) with its id."""
    ids = dict(bpe_model(tok_json)["vocab"])
    for added in tok_json.get("added_tokens", []):
        known = ids.setdefault(added["content"], added["id"])
        if known != added["id"]:
            raise LingraftError(f"added token {added['content']!r} has id {added['id']} but the model vocabulary "
                                f"gives it {known}")
    return ids


def added_token_contents(tok_json: Mapping[str, Any]) -> set[str]:
    return {a["content"] for a in tok_json.get("added_tokens", [])}


def atoms(vocab: Iterable[str], merges: Sequence[Pair]) -> set[str]:
    """Tokens of `vocab` that no merge produces (bytes, characters, control pieces)."""
    produced = {a + b for a, b in merges}
    return {t for t in vocab if t not in produced}


def producers(merges: Sequence[Pair]) -> dict[str, Pair]:
    """For each merge result, the lowest-ranked merge producing it."""
    first: dict[str, Pair] = {}
    for a, b in merges:
        first.setdefault(a + b, (a, b))
    return first


def closure(token: str, producer: Mapping[str, Pair], have: Collection[str]) -> list[str] | None:
    """Tokens missing from `have` that building `token` needs, parts before wholes (`token` last).

    None when some needed token has no producer: a character the vocabulary lacks, or a
    token whose every producing merge was refused.
    """
    order: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(token, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if t in have or t in seen:
            continue
        if t not in producer:
            return None
        seen.add(t)
        a, b = producer[t]
        stack += [(t, True), (b, False), (a, False)]
    return order


@dataclass
class ExtensionPlan:
    tokens: list[str]            # new tokens, in id order
    merges: list[Pair]           # appended after the base merges, in this order
    rejected_by_protect: int     # candidates refused because every way to build them touches protected text
    unbuildable: int             # candidates needing a symbol the vocabulary lacks (e.g. an unseen character)
    already_in_base: int         # new-tokenizer tokens the base already has
    refused_by_rule: dict[str, int] = field(default_factory=dict)   # reason -> candidates the rule refused


def splits(token: str, have: Collection[str], banned: Collection[Pair] = frozenset()) -> list[Pair]:
    """Every way to write `token` as two tokens of `have`, except pairs in `banned`."""
    return [(token[:i], token[i:]) for i in range(1, len(token))
            if token[:i] in have and token[i:] in have and (token[:i], token[i:]) not in banned]


def _build(token: str, have: Collection[str], producer: Mapping[str, Pair], banned: Collection[Pair],
           banned_words: Collection[str]) -> list[str] | None:
    """Tokens to add so that `token` can be built: itself if two tokens of `have` make it, else its
    closure along the new tokenizer's merges; None when neither works."""
    if token in banned_words:
        return None
    if splits(token, have, banned):
        return [token]
    return closure(token, producer, have)


def plan_extension(vocab: Mapping[str, int], new_merges: Sequence[Pair], budget: int | None,
                   order: Sequence[str] | None = None, protected_pairs: Collection[Pair] = frozenset(),
                   protected_words: Collection[str] = frozenset(),
                   refusal: Callable[[str], str | None] | None = None) -> ExtensionPlan:
    """Choose up to `budget` new tokens of another BPE and the merges that build them.

    Candidates are the other BPE's merge results that `vocab` lacks, tried in `order`
    (default: its merge rank); each is taken, with whatever its merge path needs, while the
    budget (None: unlimited) allows. Every new token t then gets one merge per way of
    writing t = a + b with a and b in the combined vocabulary, ranked after all base merges
    in the order the tokens were taken. This is how the converted Llama-3 (tiktoken) and
    SentencePiece BPEs list their own merges, and it lets a new token fire on the base's
    segmentation (which rarely splits it where the other BPE did).

    Protection: a pair in `protected_pairs` never becomes a merge, and a token in
    `protected_words` is never added (with ``ignore_merges`` a whole pre-token found in the
    vocabulary bypasses merging).

    `refusal` (token -> reason, or None to allow) is the new-token rule of
    `vocabulary.token_rules`: a token it refuses is never added, as a candidate or as a part.
    """
    banned, banned_words = set(protected_pairs), set(protected_words)
    fresh = [(a, b) for a, b in new_merges if a + b not in vocab]
    producer_any = producers(fresh)
    reasons = {t: refusal(t) for t in producer_any} if refusal is not None else {}
    refused = {t for t, why in reasons.items() if why}
    producer_rule = producers([(a, b) for a, b in fresh if a + b not in refused])
    never = banned_words | refused
    producer_ok = producers([(a, b) for a, b in fresh if (a, b) not in banned and a + b not in never])
    order = list(producer_any) if order is None else order
    limit = len(producer_any) if budget is None else budget
    have, chosen, rejected, unbuildable = set(vocab), [], 0, 0
    by_rule: Counter[str] = Counter()
    for token in order:
        if len(chosen) >= limit:
            break
        if token in have:
            continue
        if token in refused:
            by_rule[reasons[token]] += 1
            continue
        needed = _build(token, have, producer_ok, banned, never)
        if needed is None:
            if _build(token, have, producer_any, (), ()) is None:
                unbuildable += 1
            elif _build(token, have, producer_rule, (), refused) is None:
                by_rule["needs_a_refused_part"] += 1
            else:
                rejected += 1
        elif len(chosen) + len(needed) <= limit:
            chosen += needed
            have.update(needed)
    rank = {**vocab, **{t: len(vocab) + i for i, t in enumerate(chosen)}}
    merges = sorted((pair for t in chosen for pair in splits(t, have, banned)),
                    key=lambda p: (rank[p[0] + p[1]], rank[p[0]], rank[p[1]]))
    return ExtensionPlan(tokens=chosen, merges=merges, rejected_by_protect=rejected, unbuildable=unbuildable,
                         already_in_base=len({a + b for a, b in new_merges} & set(vocab)),
                         refused_by_rule=dict(by_rule))


def plan_shrink(tok_json: Mapping[str, Any], size: int, order: Sequence[str],
                required: Collection[str] = ()) -> set[str]:
    """The `size` model tokens to keep: all atoms, then every `required` token (those the chat
    template produces), then tokens of `order` (most used first), each with its closure when
    that still fits; left-over room goes to the lowest-ranked merge results (each needs one
    slot, as its parts rank lower and are already in). Added tokens are kept on top of `size`."""
    model = bpe_model(tok_json)
    vocab, merges = model["vocab"], merge_list(model)
    added = added_token_contents(tok_json)
    kept = atoms(vocab, merges) - added
    if size < len(kept):
        raise LingraftError(f"cannot keep {size} base tokens: the base has {len(kept)} atoms (bytes, byte-fallback "
                            f"pieces, single characters) that every BPE of it needs")
    if size > len(set(vocab) - added):
        raise LingraftError(f"cannot keep {size} base tokens: the base has only {len(set(vocab) - added)}")
    producer = producers(merges)
    for token in sorted({t for t in required if t in vocab} - kept - added, key=vocab.__getitem__):
        kept.update(closure(token, producer, kept) or [])
    if len(kept) > size:
        raise LingraftError(f"cannot keep {size} base tokens: the atoms and the tokens the chat template and "
                            f"special tokens need are already {len(kept)}")
    for token in (*order, *producer):
        if len(kept) >= size:
            break
        if token in kept or token in added:
            continue
        needed = closure(token, producer, kept)
        if needed is not None and len(kept) + len(needed) <= size:
            kept.update(needed)
    return kept | added


def assemble(tok_json: Mapping[str, Any], new_tokens: Sequence[str], new_merges: Sequence[Pair],
             keep: Collection[str] | None = None) -> tuple[dict[str, Any], list[int]]:
    """The variant's tokenizer JSON and ``old_id_of_new_id`` (-1 for a token the base lacks).

    keep=None keeps every old token at its old id (Extended); otherwise only old tokens in
    `keep` stay, re-numbered 0.. in their old order (Optimized). Base merges survive when
    their parts and result all stay. New tokens take the ids after the old ones.
    """
    old_ids = old_token_ids(tok_json)
    if keep is None:
        ids = sorted(old_ids.values())
        if ids != list(range(len(ids))):
            raise LingraftError("base tokenizer ids are not contiguous from 0; cannot append new tokens after them")
        new_id = dict(old_ids)
    else:
        missing = sorted(added_token_contents(tok_json) - set(keep))
        if missing:
            raise LingraftError(f"added/special tokens must be kept; {missing[0]!r} is not")
        kept = sorted((t for t in old_ids if t in keep), key=old_ids.__getitem__)
        new_id = {t: i for i, t in enumerate(kept)}
    old_kept = set(new_id)
    clash = [t for t in new_tokens if t in new_id]
    if clash:
        raise LingraftError(f"new token {clash[0]!r} is already in the vocabulary")
    for t in new_tokens:
        new_id[t] = len(new_id)
    old_id_of_new_id = [-1] * len(new_id)
    for t, i in new_id.items():
        old_id_of_new_id[i] = old_ids.get(t, -1)

    out = dict(tok_json)     # shallow: only the parts replaced below differ from the base
    model = out["model"] = dict(out["model"])
    base_merges = merge_list(model)
    model["vocab"] = dict(sorted(new_id.items(), key=lambda kv: kv[1]))
    # A dropped base token that comes back as a new token is built by new merges only, so
    # that base merges stay exactly the shrunk base's.
    model["merges"] = [[a, b] for a, b in base_merges if a in old_kept and b in old_kept and a + b in old_kept]
    model["merges"] += [[a, b] for a, b in new_merges]
    out["added_tokens"] = sorted(({**added, "id": new_id[added["content"]]} for added in out.get("added_tokens", [])),
                                 key=lambda a: a["id"])
    if out.get("post_processor"):
        out["post_processor"] = _remap_post_processor(out["post_processor"], new_id)
    return out, old_id_of_new_id


def _remap_post_processor(node: Any, new_id: Mapping[str, int]) -> Any:
    """Post-processors cite special tokens by id (TemplateProcessing ``ids``, Bert/Roberta
    ``[token, id]``); point them at the tokens' new ids."""
    if isinstance(node, list):
        return [_remap_post_processor(v, new_id) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _remap_post_processor(v, new_id) for k, v in node.items()}
    if isinstance(out.get("tokens"), list) and isinstance(out.get("ids"), list):
        out["ids"] = [_lookup(new_id, t) for t in out["tokens"]]
    for key in ("sep", "cls"):
        value = out.get(key)
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            out[key] = [value[0], _lookup(new_id, value[0])]
    return out


def _lookup(new_id: Mapping[str, int], token: str) -> int:
    if token not in new_id:
        raise LingraftError(f"post-processor uses token {token!r}, which the variant does not keep")
    return new_id[token]


def reachable(tok_json: Mapping[str, Any]) -> set[str]:
    """Model tokens that merges can build from atoms (used to check a variant is consistent)."""
    model = bpe_model(tok_json)
    merges = merge_list(model)
    have = atoms(model["vocab"], merges)
    grew = True
    while grew:
        grew = False
        for a, b in merges:
            if a in have and b in have and a + b not in have:
                have.add(a + b)
                grew = True
    return have

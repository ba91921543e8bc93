"""Trans-tokenization (Remy et al. 2024): new-token embeddings as translation-weighted old ones.

Each new token t gets ``E_new[t] = sum_s p(s|t) E_old[s]``, where p(s|t) is how often old
token s stands, in translation, where t stands. The probabilities come from aligned word
pairs (old-language word, new-language word):

  1. Word pairs (`vocabulary.alignment`). Parallel text is word-aligned with eflomal and
     symmetrised; every link is one pair. A dictionary entry (headword, gloss) of at most
     `max_phrase_words` words a side pairs every gloss word with every headword word at
     weight 1/(n_old * n_new): one clean pair per entry, spread thin over phrases.
  2. Projection to tokens. Both words are segmented in their word-initial running-text form
     (" word"), the new one by the new tokenizer, the old one by the old tokenizer, leaving out
     punctuation-only pieces of words that have letters. Each of the m new tokens of the word
     receives one unit of count per pair occurrence, shared among the n old tokens of the
     translation: `positional_share` of it by overlap of relative position (token i covers
     [i/m, (i+1)/m) of its word, old token j covers [j/n, (j+1)/n)), the rest uniformly. This
     is the paper's rule (half via an all-to-all mapping, half via a position-wise mapping of
     the two token lists stretched to a common length) in closed form.
  3. p(s|t) = count(t, s) / sum_s' count(t, s'), for every t with at least `min_count` units
     of evidence, counted from the pairs where t is the whole new word when those alone reach
     `min_count` (`prefer_whole_words`; a deviation from the paper, see `TokenCounts`). The
     tail is pruned (below `min_prob`, beyond `top_k`) and the row renormalised. Provenance
     ``aligned``.
  4. Smoothing, for new tokens without evidence (the paper's smoothing step, made stricter):
     the average of the rows of aligned tokens that (a) extend the token (it is their prefix,
     with or without a word-initial space); failing that, (b) share its longest prefix, of at
     least `min_shared_prefix` characters and half the token (inflections: " кошкой" borrows
     from " кошка"); failing that, (c) cover it (non-overlapping substrings, longest first,
     one at its start, half its characters or more). Provenance ``smoothed``.
  5. Everything else comes from the base map (default: `token_matching.build_mean_map`):
     tokens whose text the old vocabulary holds verbatim are ``kept`` (identity row, never
     overridden), special tokens are ``special``, the rest ``mean`` of the old pieces, and
     what has no source at all ``fallback`` (global mean).
"""
from __future__ import annotations

import bisect
import functools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.vocabulary.alignment import AlignerParams, WordPairs, word_pairs_from_dictionary, word_pairs_from_parallel
from lingraft.vocabulary.token_map import TokenMap
from lingraft.vocabulary.token_matching import OldSegmenter, build_mean_map, describe_vocabulary
from lingraft.vocabulary.translation_resources import TranslationResourceConfig, read_resource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)

Row = dict[int, float]
_LAST = "\U0010ffff"                       # sorts after every character: the end of a prefix range


@dataclass(frozen=True)
class TransTokenizeParams:
    top_k: int = 16                  # old tokens kept per row
    min_prob: float = 0.02           # drop p(s|t) below this (unless no entry reaches it)
    min_count: float = 1.0           # units of evidence a new token needs to be `aligned`
    positional_share: float = 0.5    # share of a pair's count split by token position (rest: uniform)
    prefer_whole_words: bool = True  # translate a token from its whole-word occurrences when it has enough
    smoothing: bool = True
    max_smoothing_sources: int = 32  # aligned tokens averaged into one smoothed row, at most
    min_piece_chars: int = 3         # shortest token smoothed, and shortest covering piece (non-space chars)
    min_shared_prefix: int = 4       # characters a shared-prefix source must share
    aligner: AlignerParams = field(default_factory=AlignerParams)

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 0 <= self.min_prob < 1 or self.min_count <= 0 or not 0 <= self.positional_share <= 1:
            raise LingraftError(f"transtokenize: need top_k >= 1, 0 <= min_prob < 1, min_count > 0 and "
                                f"0 <= positional_share <= 1; got {self}")


# -- 2. projection of word pairs (from vocabulary.alignment) to tokens -------------------
@functools.cache
def _share_matrix(m: int, n: int, positional_share: float) -> tuple[tuple[float, ...], ...]:
    """How one unit of count for each of m new tokens splits over n old tokens (rows sum to 1)."""
    rows = []
    for i in range(m):
        row = []
        for j in range(n):
            overlap = max(0.0, min((i + 1) / m, (j + 1) / n) - max(i / m, j / n)) * m
            row.append(positional_share * overlap + (1 - positional_share) / n)
        rows.append(tuple(row))
    return tuple(rows)


def token_texts(vocab_bytes: dict[int, bytes]) -> dict[int, str]:
    """Text of every token that is whole UTF-8 (byte fragments of a character have no useful
    substrings; they keep their mean-of-pieces row)."""
    out = {}
    for i, data in vocab_bytes.items():
        try:
            out[i] = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return out


class WordSegmenter:
    """Token ids of a word in its word-initial running-text form, cached per unique word.

    Tokens that are only punctuation or whitespace (the "-" of "well-known", a bare "▁") are
    left out of a word that also has letters: they would otherwise collect a share of every
    hyphenated word's translation and end up translating to "-".
    """

    def __init__(self, tok: "PreTrainedTokenizerFast") -> None:
        self.vocab = describe_vocabulary(tok)
        self._segment = OldSegmenter(tok, self.vocab)   # the subword model on raw bytes; works for any side
        self._cache: dict[str, tuple[int, ...]] = {}
        texts = token_texts(self.vocab.piece_bytes)
        self._no_letters = frozenset(i for i, text in texts.items() if not any(c.isalnum() for c in text))

    def __call__(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            ids = tuple(self._segment((" " + word).encode("utf-8")))
            ids = tuple(i for i in ids if i not in self._no_letters) or ids
            self._cache[word] = ids
        return ids


def _table() -> dict[int, Row]:
    return defaultdict(lambda: defaultdict(float))


class TokenCounts:
    """count(t, s), kept apart by whether t was a whole new word or one piece of a longer one.

    A token that is a word of its own somewhere (" и", " кошка") is best translated from those
    occurrences: as the first piece of longer words (" и" + "он") it collects their
    translations too, which for short, frequent pieces swamps the real signal.
    """

    def __init__(self) -> None:
        self.whole = _table()
        self.piece = _table()

    def tokens(self) -> set[int]:
        return set(self.whole) | set(self.piece)

    def update(self, other: "TokenCounts") -> None:
        for mine, theirs in ((self.whole, other.whole), (self.piece, other.piece)):
            for t, row in theirs.items():
                target = mine[t]
                for s, c in row.items():
                    target[s] += c

    def row(self, t: int, prefer_whole: bool, min_count: float) -> Row:
        """count(t, .) from whole-word occurrences if they reach `min_count` (and preferred), else all."""
        whole, piece = self.whole.get(t, {}), self.piece.get(t, {})
        if prefer_whole and sum(whole.values()) >= min_count:
            return dict(whole)
        merged = defaultdict(float, whole)
        for s, c in piece.items():
            merged[s] += c
        return merged


def project_to_tokens(word_pairs: WordPairs, new_seg: WordSegmenter, old_seg: WordSegmenter,
                      positional_share: float) -> TokenCounts:
    """count(t, s) summed over word pairs, by the position/uniform sharing rule (module doc, step 2)."""
    counts = TokenCounts()
    for (new_word, old_word), weight in progress(word_pairs.items(), desc="projecting", unit="pair"):
        t_ids, s_ids = new_seg(new_word), old_seg(old_word)
        if not t_ids or not s_ids:
            continue
        table = counts.whole if len(t_ids) == 1 else counts.piece
        shares = _share_matrix(len(t_ids), len(s_ids), positional_share)
        for t, share_row in zip(t_ids, shares):
            row = table[t]
            for s, share in zip(s_ids, share_row):
                row[s] += weight * share
    return counts


# -- 3. probabilities --------------------------------------------------------------------------
def prune_row(row: Row, top_k: int, min_prob: float) -> Row:
    """The `top_k` largest entries at or above `min_prob` of the normalised row, renormalised
    to sum to 1."""
    total = sum(row.values())
    if total <= 0:
        return {}
    ranked = sorted(((s, c / total) for s, c in row.items()), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    # A flat row (nothing reaches min_prob) stays flat over its top_k: collapsing it onto its
    # largest entry would turn "no clear translation" into one arbitrary translation.
    kept = [(s, p) for s, p in ranked if p >= min_prob] or ranked
    norm = sum(p for _, p in kept)
    return {s: p / norm for s, p in kept}


def translation_rows(counts: TokenCounts, tokens: set[int], params: TransTokenizeParams
                     ) -> tuple[dict[int, Row], dict[int, float]]:
    """p(s|t) rows, and units of evidence, of the `tokens` with at least `min_count` units."""
    rows, evidence = {}, {}
    for t in sorted(tokens & counts.tokens()):
        row = counts.row(t, params.prefer_whole_words, params.min_count)
        total = sum(row.values())
        if total >= params.min_count:
            rows[t] = prune_row(row, params.top_k, params.min_prob)
            evidence[t] = total
    return rows, evidence


# -- 4. smoothing ------------------------------------------------------------------------------
class Smoother:
    """Rows for unmapped tokens from the rows of aligned tokens with related strings.

    Rules, first match wins (module doc, step 4): `extension` (aligned tokens that continue
    the token), `shared_prefix` (aligned tokens sharing a prefix of at least half the token and
    `min_shared_prefix` characters: other inflections of the same stem), `cover` (aligned
    substrings of at least `min_piece_chars` characters, one of them at the token's start,
    covering half the token or more).
    Tokens shorter than `min_piece_chars` are left alone: nearly every word extends them.
    """

    def __init__(self, texts: dict[int, str], aligned: dict[int, Row], evidence: dict[int, float],
                 params: TransTokenizeParams) -> None:
        self.params = params
        self.aligned = aligned
        self.evidence = evidence
        self.by_text = {texts[t]: t for t in aligned if t in texts}
        self.sorted_texts = sorted(self.by_text)

    def row(self, text: str) -> tuple[Row, str]:
        """The smoothed row of a token with this text and the rule that made it, or ({}, "")."""
        if len(text.strip()) < self.params.min_piece_chars:
            return {}, ""
        for rule, find in (("extension", self._extensions), ("shared_prefix", self._shared_prefix),
                           ("cover", self._cover)):
            sources = find(text)
            if sources:
                return self._mix(sources), rule
        return {}, ""

    def _mix(self, sources: set[int]) -> Row:
        """Equal-weight average of the best-attested sources' rows (each sums to 1)."""
        best = sorted(sources, key=lambda t: (-self.evidence.get(t, 0.0), t))[: self.params.max_smoothing_sources]
        mixed: Row = defaultdict(float)
        for t in best:
            for s, p in self.aligned[t].items():
                mixed[s] += p / len(best)
        return prune_row(mixed, self.params.top_k, self.params.min_prob)

    def _with_prefix(self, prefix: str) -> set[int]:
        lo = bisect.bisect_left(self.sorted_texts, prefix)
        hi = bisect.bisect_left(self.sorted_texts, prefix + _LAST, lo)
        return {self.by_text[x] for x in self.sorted_texts[lo:hi]}

    def _extensions(self, text: str) -> set[int]:
        """Aligned tokens that continue `text` ("кош" -> "кошка"), also word-initially (" кошка")."""
        found = self._with_prefix(text)
        if not text.startswith(" "):
            found |= self._with_prefix(" " + text)
        return found

    def _shared_prefix(self, text: str) -> set[int]:
        """Aligned tokens sharing the longest common prefix with `text`, if long enough."""
        pos = bisect.bisect_left(self.sorted_texts, text)
        best = 0
        for other in self.sorted_texts[max(pos - 1, 0):pos + 1]:   # the longest match is a sorted neighbour
            n = 0
            while n < min(len(text), len(other)) and text[n] == other[n]:
                n += 1
            best = max(best, n)
        shared = len(text[:best].strip())
        if shared < self.params.min_shared_prefix or 2 * shared < len(text.strip()):
            return set()
        return self._with_prefix(text[:best])

    def _cover(self, text: str) -> set[int]:
        """Longest aligned substrings of `text`, non-overlapping, chosen longest first."""
        taken = [False] * len(text)
        found = set()
        for length in range(len(text) - 1, self.params.min_piece_chars - 1, -1):
            for start in range(len(text) - length + 1):
                piece = text[start:start + length]
                if len(piece.strip()) < self.params.min_piece_chars or any(taken[start:start + length]):
                    continue
                t = self.by_text.get(piece)
                if t is not None:
                    found.add(t)
                    taken[start:start + length] = [True] * length
        # The stem must be among the pieces: endings and word-internal pieces alone ("асти" of
        # " власти", also found in "ч+асти") say little about what the token means.
        first = len(text) - len(text.lstrip())
        covered = sum(taken[i] for i, c in enumerate(text) if not c.isspace())
        return found if taken[first] and 2 * covered >= len(text.strip()) else set()


# -- 5. assembly -------------------------------------------------------------------------------
def build_transtokenize_map(old_tok: "PreTrainedTokenizerFast", new_tok: "PreTrainedTokenizerFast",
                            resources: Sequence[TranslationResourceConfig], *, top_k: int = 16,
                            min_prob: float = 0.02, seed: int = 0, min_count: float = 1.0,
                            params: TransTokenizeParams | None = None,
                            base_map: TokenMap | None = None) -> tuple[TokenMap, dict]:
    """The trans-tokenization TokenMap from `old_tok` to `new_tok`, and statistics of its making.

    `seed` picks the sample of a resource read with `max_pairs`. `params` overrides the
    keyword knobs wholesale. `base_map` supplies kept/special/mean/fallback rows (default:
    `build_mean_map(old_tok, new_tok)`); its kept and special rows are never overridden.
    """
    if not resources:
        raise LingraftError("transtokenize: give at least one translation resource")
    params = params or TransTokenizeParams(top_k=top_k, min_prob=min_prob, min_count=min_count)
    start = time.perf_counter()
    base = base_map if base_map is not None else build_mean_map(old_tok, new_tok)
    old_seg, new_seg = WordSegmenter(old_tok), WordSegmenter(new_tok)
    if base.new_vocab != new_seg.vocab.size or base.old_vocab != old_seg.vocab.size:
        raise LingraftError(f"transtokenize: base map is {base.new_vocab} x {base.old_vocab}, tokenizers are "
                            f"{new_seg.vocab.size} x {old_seg.vocab.size}")
    stats: dict = {"resources": []}
    counts = TokenCounts()
    for cfg in resources:
        res_stats, res_counts = _resource_counts(cfg, seed, params, new_seg, old_seg)
        stats["resources"].append(res_stats)
        counts.update(res_counts)
    texts = token_texts(new_seg.vocab.piece_bytes)
    rows, provenance, smoothed_by = _assemble(base, counts, texts, set(new_seg.vocab.added), params)
    token_map = TokenMap.from_rows(rows, provenance, old_vocab=base.old_vocab)
    by_prov = token_map.provenance_counts()
    translatable = token_map.new_vocab - by_prov["kept"] - by_prov["special"]
    stats.update(tokens_with_evidence=len(counts.tokens()), provenance=by_prov, smoothed_by=smoothed_by,
                 mapped_fraction=round(by_prov["aligned"] / max(translatable, 1), 4),
                 covered_fraction=round((by_prov["aligned"] + by_prov["smoothed"]) / max(translatable, 1), 4),
                 seconds=round(time.perf_counter() - start, 2))
    log.info("transtokenize: %s (aligned %.1f%% of %d translatable tokens) in %.1f s", by_prov,
             100 * stats["mapped_fraction"], translatable, stats["seconds"])
    return token_map, stats


def _resource_counts(cfg: TranslationResourceConfig, seed: int, params: TransTokenizeParams,
                     new_seg: WordSegmenter, old_seg: WordSegmenter) -> tuple[dict, TokenCounts]:
    start = time.perf_counter()
    pairs = read_resource(cfg, seed=seed)
    read_s = time.perf_counter() - start
    if pairs.kind == "parallel":
        word_pairs, extra = word_pairs_from_parallel(pairs, params.aligner)
    else:
        word_pairs, extra = word_pairs_from_dictionary(pairs)
    counts = project_to_tokens(word_pairs, new_seg, old_seg, params.positional_share)
    stats = {"name": cfg.name, "path": str(cfg.path), "kind": pairs.kind, "records": pairs.records,
             "pairs": len(pairs), "dropped": dict(pairs.drops.counts), **extra,
             "aligned_word_pairs": round(sum(word_pairs.values()), 1), "unique_word_pairs": len(word_pairs),
             "tokens_with_evidence": len(counts.tokens()), "seconds_read": round(read_s, 2),
             "seconds": round(time.perf_counter() - start, 2)}
    log.info("%s: %d %s pairs -> %d unique word pairs -> evidence for %d new tokens (%.1f s)", cfg.name,
             len(pairs), pairs.kind, len(word_pairs), stats["tokens_with_evidence"], stats["seconds"])
    return stats, counts


def _assemble(base: TokenMap, counts: TokenCounts, texts: dict[int, str], added: set[int],
              params: TransTokenizeParams) -> tuple[list[Row], list[str], dict[str, int]]:
    """Final rows: base kept/special rows stay; aligned; smoothed; else the base row."""
    base_prov = [base.provenance_of(t) for t in range(base.new_vocab)]
    # Only subword tokens the old vocabulary lacks are translated; a special token without an
    # old counterpart stays `fallback` (it is a control symbol, not a word).
    translatable = {t for t, p in enumerate(base_prov) if p == "mean" or (p == "fallback" and t not in added)}
    aligned, evidence = translation_rows(counts, translatable, params)
    smoother = Smoother(texts, aligned, evidence, params) if params.smoothing else None
    rows: list[Row] = []
    provenance: list[str] = []
    smoothed_by: Counter = Counter()
    for t in range(base.new_vocab):
        if t in aligned:
            rows.append(aligned[t])
            provenance.append("aligned")
            continue
        smoothed, rule = smoother.row(texts[t]) if smoother is not None and t in texts and t in translatable \
            else ({}, "")
        if smoothed:
            rows.append(smoothed)
            provenance.append("smoothed")
            smoothed_by[rule] += 1
        else:
            rows.append(base.row(t))
            provenance.append(base_prov[t])
    return rows, provenance, dict(smoothed_by)

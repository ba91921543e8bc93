"""Aligned word pairs from translation resources: parallel text via eflomal, dictionaries as given.

Parallel text is word-aligned with eflomal, in both directions, symmetrised; every link is
one (new word, old word) pair. A dictionary entry is one pair when both sides are single
words; a multi-word entry (up to `max_phrase_words` a side) pairs every gloss word with every
headword word at weight 1/(n_old * n_new), so it adds as much evidence as one clean pair.

eflomal (Östling & Tiedemann 2016) is a Bayesian IBM-style aligner (IBM-1 -> HMM ->
HMM + fertility) sampled with Gibbs sampling; it is fast and markedly more accurate than
fast_align, which the trans-tokenization paper used. It aligns both directions in one call:
the forward run explains every new-language word by at most one old-language word, the
reverse run the other way round. Neither is symmetric, so the two are merged with a
symmetrisation heuristic (Koehn et al. 2003; Och & Ney 2003):

  * ``intersection``: links both directions agree on (high precision, low recall);
  * ``union``: links either direction proposes (high recall, noisy);
  * ``grow-diag-final-and`` (default, the Moses standard): start from the intersection, add
    union links that neighbour an existing link (also diagonally) and touch a word that is
    still unaligned, repeated until nothing changes; then add remaining union links whose
    two words are both still unaligned.

eflomal seeds its sampler from /dev/urandom and has no seed option, so alignments can
differ in a few links between runs; the counts built from thousands of sentences do not
change materially.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Sequence

from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.vocabulary.translation_resources import ResourcePairs, is_word, split_words

log = get_logger(__name__)

Symmetrization = Literal["grow-diag-final-and", "intersection", "union"]
Link = tuple[int, int]   # (old-language word index, new-language word index)
WordPairs = dict[tuple[str, str], float]   # (new word, old word) -> evidence weight
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class AlignerParams:
    symmetrization: Symmetrization = "grow-diag-final-and"
    samplers: int = 1            # independent Gibbs samplers per direction; more = smoother, slower
    rel_iterations: float = 1.0  # eflomal's iteration count relative to its corpus-size default
    null_prior: float = 0.2      # prior probability of a word aligning to nothing


def word_pairs_from_parallel(pairs: ResourcePairs, aligner: AlignerParams) -> tuple[WordPairs, dict]:
    """Aligned (new word, old word) pairs of a parallel resource, with their counts."""
    old_sents, new_sents = [], []
    for index, (old, new) in enumerate(zip(pairs.old_texts, pairs.new_texts)):
        o, n = split_words(old), split_words(new)
        if o and n:
            old_sents.append(o)
            new_sents.append(n)
        else:  # e.g. a message that was only a placeholder
            pairs.drops.drop("no_words", f"{pairs.config.path}[pair {index}]", f"{old!r} / {new!r}")
    start = time.perf_counter()
    links = align_words(old_sents, new_sents, aligner)
    counts: WordPairs = defaultdict(float)
    for o, n, sent_links in zip(old_sents, new_sents, links):
        for i, j in sent_links:
            counts[n[j], o[i]] += 1.0
    return counts, {"sentences_aligned": len(old_sents), "links": sum(map(len, links)),
                    "seconds_align": round(time.perf_counter() - start, 2)}


def word_pairs_from_dictionary(pairs: ResourcePairs) -> tuple[WordPairs, dict]:
    """(new word, old word) pairs of dictionary entries; multi-word entries all-to-all, diluted."""
    counts: WordPairs = defaultdict(float)
    for index, (old, new) in enumerate(zip(pairs.old_texts, pairs.new_texts)):
        o = [w for w in split_words(old) if is_word(w)]
        n = [w for w in split_words(new) if is_word(w)]
        if not o or not n:
            pairs.drops.drop("no_words", f"{pairs.config.path}[entry {index}]", f"{old!r} / {new!r}")
            continue
        if max(len(o), len(n)) > pairs.config.max_phrase_words:   # an explanation, not a translation
            pairs.drops.drop("long_phrase", f"{pairs.config.path}[entry {index}]", f"{old!r} / {new!r}")
            continue
        weight = 1.0 / (len(o) * len(n))
        for new_word in n:
            for old_word in o:
                counts[new_word, old_word] += weight
    return counts, {}


def align_words(old_sents: Sequence[Sequence[str]], new_sents: Sequence[Sequence[str]],
                params: AlignerParams = AlignerParams()) -> list[list[Link]]:
    """Symmetrised word links for each sentence pair; every sentence must hold at least one
    word and no word may contain whitespace (both hold for `split_words` output)."""
    if len(old_sents) != len(new_sents):
        raise LingraftError(f"word alignment: {len(old_sents)} old-language sentences but {len(new_sents)} new")
    if not old_sents:
        return []
    fwd, rev = run_eflomal(old_sents, new_sents, params)
    return [symmetrize(f, r, len(o), len(n), params.symmetrization)
            for f, r, o, n in zip(fwd, rev, old_sents, new_sents)]


def run_eflomal(old_sents: Sequence[Sequence[str]], new_sents: Sequence[Sequence[str]],
                params: AlignerParams) -> tuple[list[set[Link]], list[set[Link]]]:
    """eflomal's forward and reverse links, both as (old index, new index) sets per sentence."""
    try:
        import eflomal
    except ImportError:
        raise LingraftError("word alignment needs eflomal: pip install eflomal") from None
    if any(not s for s in old_sents) or any(not s for s in new_sents):
        raise LingraftError("word alignment: every sentence needs at least one word")
    start = time.perf_counter()
    aligner = eflomal.Aligner(n_samplers=params.samplers, rel_iterations=params.rel_iterations,
                              null_prior=params.null_prior)
    with tempfile.TemporaryDirectory(prefix="lingraft-eflomal-") as tmp:
        fwd_path, rev_path = os.path.join(tmp, "fwd"), os.path.join(tmp, "rev")
        try:
            aligner.align((" ".join(s) for s in old_sents), (" ".join(s) for s in new_sents),
                          links_filename_fwd=fwd_path, links_filename_rev=rev_path, quiet=True)
            fwd, rev = _read_links(fwd_path, len(old_sents)), _read_links(rev_path, len(old_sents))
        except (OSError, ValueError) as exc:
            raise LingraftError(f"eflomal failed ({type(exc).__name__}: {exc})") from None
    log.info("eflomal aligned %d sentence pairs in %.1f s", len(old_sents), time.perf_counter() - start)
    return fwd, rev


def _read_links(path: str, expected: int) -> list[set[Link]]:
    with open(path, encoding="ascii") as fh:
        lines = fh.read().splitlines()
    if len(lines) != expected:
        raise LingraftError(f"eflomal wrote {len(lines)} alignment lines for {expected} sentence pairs")
    out = []
    for line in lines:
        links = set()
        for item in line.split():
            i, j = item.split("-")
            links.add((int(i), int(j)))
        out.append(links)
    return out


def symmetrize(fwd: set[Link], rev: set[Link], n_old: int, n_new: int,
               heuristic: Symmetrization = "grow-diag-final-and") -> list[Link]:
    """Merge the two directional alignments of one sentence pair; returns sorted links."""
    if heuristic == "intersection":
        return sorted(fwd & rev)
    union = fwd | rev
    if heuristic == "union":
        return sorted(union)
    if heuristic != "grow-diag-final-and":
        raise LingraftError(f"unknown symmetrization {heuristic!r}; expected grow-diag-final-and, "
                            f"intersection or union")
    links = set(fwd & rev)
    old_done = {i for i, _ in links}
    new_done = {j for _, j in links}
    grew = True
    while grew:                         # grow-diag
        grew = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                cand = (i + di, j + dj)
                if cand in union and cand not in links and (cand[0] not in old_done or cand[1] not in new_done):
                    links.add(cand)
                    old_done.add(cand[0])
                    new_done.add(cand[1])
                    grew = True
    for directional in (fwd, rev):      # final-and
        for i, j in sorted(directional):
            if (i, j) not in links and i not in old_done and j not in new_done and i < n_old and j < n_new:
                links.add((i, j))
                old_done.add(i)
                new_done.add(j)
    return sorted(links)

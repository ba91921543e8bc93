"""Exact and near-duplicate detection over a stream of documents (the first copy is kept).

Exact: a 128-bit hash of the whitespace-normalised text (computed with numpy).

Near: MinHash-LSH (datasketch). Shingling, hashing and the MinHash signature are computed
with numpy over whole documents, with no per-word or per-shingle Python code:

1. the lower-cased text becomes an array of code points;
2. word mode: each run of word characters (letters, digits, combining marks) gets a
   polynomial hash, summed per word with `np.add.reduceat`; char mode: each code point
   is a token;
3. k consecutive token hashes are combined into one 32-bit shingle hash;
4. the signature is datasketch's "affine32" scheme, `min over shingles of
   a_i * fmix32(h) + b_i (mod 2^32)`, applied to blocks of shingles at once. It equals
   `MinHash(hashfunc=int).update_batch(shingle_hashes)` (the tests check this) and is put in
   a `LeanMinHash` for `MinHashLSH`.
"""
from __future__ import annotations

import hashlib
import unicodedata

import numpy as np

from lingraft.data_prep.clean_config import NearDedupConfig
from lingraft.data_prep.cleaning import CodepointTable, codepoints

_U64 = np.uint64
_U32 = np.uint32
_BLOCK = 8192  # shingles per signature block: 8192 x 128 permutations x 4 B = 4 MB of temporaries


class ExactDeduplicator:
    """Remembers a 128-bit key per text; texts that differ only in whitespace share a key."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._space = CodepointTable(str.isspace)

    def key(self, text: str) -> bytes:
        """blake2b of the code points of `" ".join(text.split())`, computed with numpy: every
        whitespace run becomes one space, leading and trailing runs disappear."""
        cps = codepoints(text)
        space = self._space.mask(cps)
        run_start = space & ~np.concatenate(([True], space[:-1]))  # a leading run has no start
        collapsed = np.where(space, _U32(32), cps)[~space | run_start]
        if space.size and space[-1]:
            collapsed = collapsed[:-1]  # the trailing run's single space
        return hashlib.blake2b(collapsed.tobytes(), digest_size=16).digest()

    def is_duplicate(self, text: str) -> bool:
        """True if an equal text was seen before; otherwise remember this one."""
        key = self.key(text)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: an avalanching bijection on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix of datasketch's affine32 scheme."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _is_word_char(ch: str) -> bool:
    # Combining marks count as word characters so that e.g. a stress accent does not split a word.
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


class ShingleHasher:
    """Text -> array of 32-bit shingle hashes (a set representation for MinHash)."""

    _WORD_BASE = _U64(0x100000001B3)

    def __init__(self, unit: str, size: int):
        if unit not in ("word", "char"):
            raise ValueError(f"shingle unit must be 'word' or 'char', got {unit!r}")
        self.unit, self.size = unit, size
        self._word_chars = CodepointTable(_is_word_char)
        self._powers = np.ones(1, dtype=_U64)
        # Distinct odd multipliers make the combination order-sensitive ("a b" != "b a").
        self._position_mult = mix64(np.arange(1, size + 1, dtype=_U64)) | _U64(1)

    def _pow(self, n: int) -> np.ndarray:
        """WORD_BASE ** i for i < n (mod 2^64), grown on demand."""
        if len(self._powers) < n:
            m = max(n, 2 * len(self._powers))
            self._powers = np.concatenate([[_U64(1)], np.cumprod(np.full(m - 1, self._WORD_BASE, dtype=_U64))])
        return self._powers

    def word_tokens(self, cps: np.ndarray) -> np.ndarray:
        """One uint64 hash per maximal run of word characters, in text order."""
        is_word = self._word_chars.mask(cps)
        edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if starts.size == 0:
            return np.zeros(0, dtype=_U64)
        lengths = ends - starts
        chars = cps[is_word].astype(_U64) + _U64(1)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        pos_in_word = np.arange(chars.size) - np.repeat(offsets, lengths)
        poly = np.add.reduceat(chars * self._pow(int(lengths.max()))[pos_in_word], offsets)
        return mix64(poly ^ lengths.astype(_U64))

    def shingles(self, text: str) -> np.ndarray:
        """uint32 hashes of the k-token shingles; a text shorter than k tokens is one shingle."""
        lowered = text.lower()
        tokens = np.zeros(0, dtype=_U64)
        if self.unit == "word":
            tokens = self.word_tokens(codepoints(lowered))
        if tokens.size == 0:  # char mode, or a text without any word characters
            tokens = mix64(codepoints(" ".join(lowered.split())).astype(_U64) + _U64(1))
        if tokens.size == 0:
            return np.zeros(0, dtype=_U32)
        k = min(self.size, tokens.size)
        n = tokens.size - k + 1
        acc = np.zeros(n, dtype=_U64)
        for j in range(k):
            acc += tokens[j:j + n] * self._position_mult[j]
        return (mix64(acc) >> _U64(32)).astype(_U32)


def minhash_signature(shingle_hashes: np.ndarray, perm_a: np.ndarray, perm_b: np.ndarray) -> np.ndarray:
    """datasketch affine32 MinHash of a set of uint32 hashes, computed in blocks."""
    hv = fmix32(shingle_hashes.astype(_U32, copy=False))
    sig = np.full(perm_a.shape[0], np.iinfo(np.uint32).max, dtype=_U32)
    for i in range(0, hv.size, _BLOCK):
        block = hv[i:i + _BLOCK, None] * perm_a + perm_b   # wraps mod 2^32, as the scheme intends
        np.minimum(sig, block.min(axis=0), out=sig)
    return sig


class NearDeduplicator:
    """Keeps an LSH index of the signatures of kept documents.

    A document is a near duplicate when the LSH returns a candidate whose estimated Jaccard
    similarity (share of equal signature slots) is >= threshold: the check on the candidates
    removes LSH's false positives. Memory: num_perm * 4 bytes per kept document plus the index.
    """

    def __init__(self, cfg: NearDedupConfig):
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self.hasher = ShingleHasher(cfg.shingle, cfg.shingle_size)
        perm = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32").permutations
        self._perm_a, self._perm_b = perm[0].astype(_U32), perm[1].astype(_U32)
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self._signatures: list[np.ndarray] = []
        self._labels: list[str] = []

    def signature(self, text: str) -> np.ndarray | None:
        shingles = self.hasher.shingles(text)
        if shingles.size == 0:
            return None
        return minhash_signature(shingles, self._perm_a, self._perm_b)

    def check(self, text: str, label: str) -> tuple[str, float] | None:
        """(label of the earlier document, estimated Jaccard) if `text` nearly duplicates it;
        otherwise None, and the text is indexed under `label`."""
        from datasketch import LeanMinHash

        sig = self.signature(text)
        if sig is None:
            return None
        lean = LeanMinHash(seed=self.cfg.seed, hashvalues=sig, scheme="affine32")
        best: tuple[str, float] | None = None
        for key in self._lsh.query(lean):
            similarity = float(np.count_nonzero(self._signatures[key] == sig)) / sig.size
            if similarity >= self.cfg.threshold and (best is None or similarity > best[1]):
                best = (self._labels[key], similarity)
        if best is not None:
            return best
        self._lsh.insert(len(self._signatures), lean, check_duplication=False)
        self._signatures.append(sig)
        self._labels.append(label)
        return None

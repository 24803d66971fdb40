"""MinHash LSH over word shingles, vectorized with numpy over a whole corpus at once.

A corpus is tokenized once into flat arrays (one 64-bit hash and one character count per
word, documents delimited by offsets). Every n-gram hash, MinHash signature and LSH bucket
is then computed by numpy over all documents together, so the Python-level work is one pass
over the texts plus a loop over the few documents that share an LSH bucket with another.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xxhash

# The permutations are Dietzfelbinger's multiply-add-shift hashes of 32-bit keys,
# h(x) = (a*x + b) mod 2^64 with a, b uniform 64-bit: their top 32 bits are a strongly
# universal family, and uint64 arithmetic wraps mod 2^64 for free, so a permutation costs
# one multiply and one add per shingle. (a*x + b) mod (2^61 - 1) would need a 122-bit
# product for a uniform a, which numpy lacks; with a and x cut to 32 bits it wraps at most
# 8 times, stays nearly monotone in x, and on two Shakespeare documents of Jaccard 0.22
# estimated 0.91. Shingle hashes are cut to their top 32 bits to be the keys; their
# collisions are negligible at the scale of one corpus.
_SHINGLE_BITS = 32
# Shingles per block of the signature computation: a (num_perm, block) uint64 scratch
# buffer of 4 MiB (at 128 permutations) stays in cache: 2.5x faster than one buffer for
# the whole example corpus, and faster than blocks of 512 to 2048 (measured). Blocks also
# bound memory whatever the length of a document.
_BLOCK_SHINGLES = 4096


class _PunctuationToSpace(dict[int, int]):
    """str.translate table mapping every Unicode punctuation character to a space.

    Filled lazily with the characters met (a corpus uses a few hundred), since classifying all
    1.1M code points up front costs more than tokenizing the example corpus.
    """

    def __missing__(self, code_point: int) -> int:
        mapped = self[code_point] = _SPACE if unicodedata.category(chr(code_point)).startswith("P") else code_point
        return mapped


_SPACE = ord(" ")
_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def words(text: str) -> list[str]:
    """The words shingles are made of: casefolded, punctuation removed, split on whitespace.

    Removing punctuation makes "lord," "lord" and "‘lord’" one word, so editions that differ
    only in punctuation still share shingles.
    """
    return text.casefold().translate(_PUNCTUATION_TO_SPACE).split()


@dataclass
class Tokens:
    """A corpus as flat word arrays: document d owns words ``offsets[d]:offsets[d + 1]``."""

    word_hash: np.ndarray  # (W,) uint64, xxh64 of the word
    word_chars: np.ndarray  # (W,) int64, characters in the word
    offsets: np.ndarray  # (D + 1,) int64

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Words per document, (D,)."""
        return np.diff(self.offsets)

    def doc_of_word(self) -> np.ndarray:
        """Index of the document each word belongs to, (W,)."""
        return np.repeat(np.arange(self.num_docs), self.lengths)

    def subset(self, keep: np.ndarray) -> "Tokens":
        """The documents at the sorted indices ``keep``, in that order."""
        mask = np.zeros(self.num_docs, dtype=bool)
        mask[keep] = True
        word_mask = mask[self.doc_of_word()]
        offsets = np.concatenate([[0], np.cumsum(self.lengths[keep])])
        return Tokens(self.word_hash[word_mask], self.word_chars[word_mask], offsets)


def tokenize(texts: list[str]) -> Tokens:
    """Tokenize every text with :func:`words`; each distinct word is hashed once."""
    vocab = _Vocab()
    ids: list[int] = []
    offsets = [0]
    for text in texts:
        ids.extend(map(vocab.__getitem__, words(text)))
        offsets.append(len(ids))
    vocab_words = list(vocab)
    hashes = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in vocab_words), dtype=np.uint64, count=len(vocab_words))
    chars = np.fromiter((len(w) for w in vocab_words), dtype=np.int64, count=len(vocab_words))
    id_array = np.asarray(ids, dtype=np.int64)
    return Tokens(hashes[id_array], chars[id_array], np.asarray(offsets, dtype=np.int64))


class _Vocab(dict[str, int]):
    """word -> id, assigning the next id to an unseen word, so map() needs no Python loop."""

    def __missing__(self, word: str) -> int:
        index = self[word] = len(self)
        return index


# Fixed odd constants (not the seed): an n-gram's hash must not depend on the run. The k-th
# word of every n-gram gets the same multiplier, so (n+1)-gram hashes extend n-gram hashes.
_NGRAM_MULTIPLIERS = np.random.default_rng(20_061).integers(0, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def iter_ngram_hashes(tokens: Tokens, max_n: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For n = 1..max_n: ``(n, hashes, complete)``, both (W,), indexed by the n-gram's first word.

    ``hashes[i]`` hashes the words ``i .. i+n-1`` that lie in word i's document (fewer near its
    end); ``complete[i]`` says all n words are there. One multiply-add pass per n; the
    ``hashes`` array is updated in place for the next n, so copy it to keep it.
    """
    if not 1 <= max_n <= len(_NGRAM_MULTIPLIERS):
        raise ValueError(f"n-gram size {max_n} must be between 1 and {len(_NGRAM_MULTIPLIERS)}")
    total = len(tokens.word_hash)
    end = tokens.offsets[1:][tokens.doc_of_word()]  # (W,) end of each word's document
    position = np.arange(total)
    acc = np.zeros(total, dtype=np.uint64)
    for k in range(max_n):
        inside = position[: total - k] + k < end[: total - k]
        acc[: total - k] += np.where(inside, tokens.word_hash[k:] * _NGRAM_MULTIPLIERS[k], np.uint64(0))
        yield k + 1, acc, position + k + 1 <= end


def ngram_hashes(tokens: Tokens, n: int, short_docs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every document, in order.

    Returns ``(hashes, offsets)``: document d's n-grams are ``hashes[offsets[d]:offsets[d+1]]``
    and start at word ``tokens.offsets[d] + k`` for the k-th. With ``short_docs`` a document
    of 1 to n-1 words yields one n-gram of all its words, so it can still be compared.
    """
    *_, (_, acc, valid) = iter_ngram_hashes(tokens, n)
    counts = np.maximum(tokens.lengths - n + 1, 0)
    if short_docs:
        lengths = tokens.lengths
        short = (lengths > 0) & (lengths < n)
        valid[tokens.offsets[:-1][short]] = True
        counts = np.where(short, 1, counts)
    return acc[valid], np.concatenate([[0], np.cumsum(counts)])


@functools.cache  # a grid search over every (bands, rows); one per config is enough
def lsh_params(threshold: float, num_perm: int, false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + false negative probability mass.

    The objective of ``datasketch.MinHashLSH`` (``weights=(1 - w, w)``): a pair of Jaccard s
    collides in some band with probability 1 - (1 - s^r)^b; integrate that below the
    threshold (false positives) and its complement above it (false negatives).
    """
    if not 0.0 < threshold <= 1.0 or num_perm < 1 or not 0.0 <= false_negative_weight <= 1.0:
        raise ValueError(
            f"lsh_params: threshold {threshold} must be in (0, 1], num_perm {num_perm} >= 1 "
            f"and false_negative_weight {false_negative_weight} in [0, 1]"
        )
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=np.float64)[:, None]
    rows = np.array([p[1] for p in pairs], dtype=np.float64)[:, None]
    grid = 4001  # trapezoid rule; fine enough to pick the same (b, r) as adaptive quadrature
    below = np.linspace(0.0, threshold, grid)[None, :]
    above = np.linspace(threshold, 1.0, grid)[None, :]
    false_pos = np.trapezoid(1 - (1 - below**rows) ** bands, below, axis=1)
    false_neg = np.trapezoid((1 - above**rows) ** bands, above, axis=1)
    error = (1 - false_negative_weight) * false_pos + false_negative_weight * false_neg
    return pairs[int(np.argmin(error))]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the ``num_perm`` hash functions x -> (a*x + b) mod 2^64 (see above)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


EMPTY = np.uint64(np.iinfo(np.uint64).max)  # signature value of a document with no shingles


def signatures(shingles: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (D, num_perm) uint64 of documents given as shingle hashes + offsets.

    Row d is the minimum over document d's shingles of each permutation; a document without
    shingles gets ``EMPTY`` everywhere.
    """
    a, b = permutations(num_perm, seed)
    x = shingles >> np.uint64(64 - _SHINGLE_BITS)
    num_docs = len(offsets) - 1
    out = np.full((num_docs, num_perm), EMPTY, dtype=np.uint64)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    starts, ends = offsets[nonempty], offsets[nonempty + 1]
    for lo in range(0, len(x), _BLOCK_SHINGLES):
        hi = min(lo + _BLOCK_SHINGLES, len(x))
        # The documents overlapping [lo, hi); the first and last may continue in other blocks,
        # so each block's minimum is merged into what earlier blocks found.
        first, last = np.searchsorted(ends, lo, side="right"), np.searchsorted(starts, hi, side="left")
        # (P, S): each permutation is a contiguous row, so the per-document min is a reduceat
        # along rows, which measured ~2x faster than the (S, P) layout.
        y = np.multiply(a[:, None], x[None, lo:hi])
        # The minimum of the full 64-bit values is the minimum of their top 32 bits (the
        # universal part), ties broken by the low bits, so no shift is needed.
        y += b[:, None]
        block_min = np.minimum.reduceat(y, np.maximum(starts[first:last], lo) - lo, axis=1).T
        rows = nonempty[first:last]
        out[rows] = np.minimum(out[rows], block_min)
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(D, bands) uint64: one hash per band of ``rows`` signature values (the LSH bucket)."""
    mix = np.random.default_rng(rows).integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    banded = sigs[:, : bands * rows].reshape(len(sigs), bands, rows)
    return (banded * mix).sum(axis=2, dtype=np.uint64)


def first_kept_duplicates(sigs: np.ndarray, bands: int, rows: int, threshold: float) -> dict[int, int]:
    """Near-duplicates under first-kept semantics: ``{dropped index: kept index}``.

    Documents are visited in order. A document is dropped when it shares an LSH bucket with
    an earlier *kept* document whose estimated Jaccard (fraction of equal signature values)
    is at least ``threshold``; it names the earliest such document. Comparing only against
    kept documents means a chain A~B~C, where C is far from A, drops B and keeps C: nothing
    is dropped unless a kept document stands in for it. Documents with an ``EMPTY``
    signature (no shingles) are never matched.
    """
    keys = band_keys(sigs, bands, rows)
    comparable = sigs[:, 0] != EMPTY
    shared = np.zeros(len(sigs), dtype=bool)
    for band in range(bands):
        column = np.where(comparable, keys[:, band], EMPTY)
        _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
        shared |= counts[inverse] > 1
    shared &= comparable
    # Only documents sharing some bucket can be duplicates or have duplicates: loop on those.
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    duplicate_of: dict[int, int] = {}
    for i in np.flatnonzero(shared).tolist():
        row_keys = keys[i].tolist()
        candidates = sorted({c for band, key in enumerate(row_keys) for c in buckets[band].get(key, ())})
        if candidates:
            similarity = (sigs[candidates] == sigs[i]).mean(axis=1)
            matches = np.flatnonzero(similarity >= threshold)
            if len(matches):
                duplicate_of[i] = candidates[int(matches[0])]
                continue
        for band, key in enumerate(row_keys):
            buckets[band].setdefault(key, []).append(i)
    return duplicate_of


def shingle_set(text: str, n: int) -> set[tuple[str, ...]]:
    """The exact set of word n-grams of ``text`` (the whole text if shorter than n words)."""
    tokens = words(text)
    if 0 < len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: str, b: str, n: int) -> float:
    """Exact Jaccard similarity of the word n-gram sets of two texts (1.0 for two empty texts)."""
    sa, sb = shingle_set(a, n), shingle_set(b, n)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0

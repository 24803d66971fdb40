"""Deduplication: repetitive documents, exact copies and near-duplicates (MinHash LSH).

Three filters run in this order, each over the documents the previous one kept:

1. ``repeated_ngrams``: a document that repeats itself (Gopher's n-gram repetition rules,
   Rae et al. 2021, table A1): too many characters in its most repeated short n-gram, or in
   repeated longer n-grams. Runs first so that a repetitive document can never be the kept
   original that its copies point to. (Gopher's duplicated-lines rule is the quality gate's
   ``duplicate_lines``, which runs before dedup.)
2. ``exact_duplicate``: same text once whitespace is collapsed and case folded.
3. ``near_duplicate``: estimated Jaccard similarity of word-shingle sets at or above the
   threshold, found with MinHash LSH (:mod:`tasks.data.minhash`).

The first occurrence in input order is kept, and every duplicate names the kept document
it duplicates, so a drop can always be checked by reading two documents.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import xxhash
from pydantic import Field, model_validator

from ladder.config import Section
from tasks.data import minhash
from tasks.data.document import Document

REPEATED_NGRAMS = "repeated_ngrams"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"


class DedupConfig(Section):
    """How the data stage removes repetitive and duplicated documents."""

    exact: bool = Field(
        True, description="Drop documents whose text, whitespace collapsed and casefolded, equals a kept document's."
    )
    near: bool = Field(True, description="Drop near-duplicates found by MinHash LSH over word shingles.")
    shingle_words: int = Field(5, ge=1, le=64, description="Words per shingle (word n-gram) for near-duplicate detection.")
    num_perm: int = Field(128, ge=2, description="Number of MinHash permutations (signature length).")
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of shingle sets at or above which a document is a near-duplicate of a kept one.",
    )
    bands: int | None = Field(
        None,
        ge=1,
        description="LSH bands; null (with rows null) picks the bands and rows that minimise the weighted "
        "false positive + false negative probability for the threshold.",
    )
    rows: int | None = Field(None, ge=1, description="Signature values per LSH band; set together with bands.")
    false_negative_weight: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Weight of missed pairs against spurious candidates when bands and rows are derived "
        "(datasketch's weights=(1-w, w)). Above 0.5 because every candidate is verified against the "
        "threshold, so a spurious one costs a comparison while a missed one stays in the data.",
    )
    seed: int = Field(0, description="Seed of the MinHash permutations.")
    repetition: bool = Field(
        True, description="Drop documents that repeat themselves (reason repeated_ngrams), by the bounds below."
    )
    max_top_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> largest allowed fraction of word characters in the document's most repeated n-gram "
        "(its count times its length).",
    )
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest allowed fraction of word characters covered by repeats of an n-gram seen "
        "earlier in the document.",
    )

    @model_validator(mode="after")
    def _check(self) -> "DedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set dedup.bands and dedup.rows together, or leave both null to derive them from the threshold")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup.bands * dedup.rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        for name in ("max_top_ngram_char_frac", "max_dup_ngram_char_frac"):
            for n, bound in getattr(self, name).items():
                if not 1 <= n <= 64 or not 0.0 <= bound <= 1.0:
                    raise ValueError(f"dedup.{name}: n-gram size {n} must be in 1..64 and bound {bound} in [0, 1]")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): as configured, or the ones minimising FP + FN for the threshold."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return minhash.lsh_params(self.threshold, self.num_perm, self.false_negative_weight)


@dataclass
class Drop:
    """A removed document, why, and the kept document it duplicates (None for repetition)."""

    doc: Document
    reason: str
    duplicate_of: str | None
    detail: str = ""  # for repeated_ngrams: the statistic that exceeded its bound


@dataclass
class DedupResult:
    """Documents kept (in input order) and dropped (in input order, each with its reason)."""

    kept: list[Document]
    dropped: list[Drop]

    def counts(self) -> dict[str, int]:
        """Documents kept and dropped by reason, e.g. ``{"kept": 90, "near_duplicate": 10}``."""
        return {"kept": len(self.kept), **Counter(drop.reason for drop in self.dropped)}


@dataclass
class DedupFeatures:
    """What the global dedup needs of each document, computed shard by shard from its text.

    Index ``i`` is the i-th document given to :func:`dedup_features`; features of consecutive
    shards are joined with :func:`join_features`.
    """

    repeated: dict[int, str]  # document index -> the repetition bound it broke
    exact_keys: list[int]  # xxh3-128 of the whitespace-collapsed, casefolded text; empty when dedup.exact is off
    signatures: np.ndarray  # (D, num_perm) uint64 MinHash signatures; (D, 0) when dedup.near is off


def dedup_features(docs: list[Document], cfg: DedupConfig) -> DedupFeatures:
    """Every per-document input of :func:`resolve_duplicates`: repetition, exact key and signature.

    Each depends on its document alone, so shards can compute them apart and give the same result.
    """
    tokens = minhash.tokenize([d.text for d in docs]) if cfg.repetition or cfg.near else None
    repeated = repetitive(tokens, cfg) if cfg.repetition and tokens is not None else {}
    keys = [xxhash.xxh3_128_intdigest(" ".join(d.text.split()).casefold().encode()) for d in docs] if cfg.exact else []
    if cfg.near and tokens is not None:
        shingles, offsets = minhash.ngram_hashes(tokens, cfg.shingle_words, short_docs=True)
        sigs = minhash.signatures(shingles, offsets, cfg.num_perm, cfg.seed)
    else:
        sigs = np.empty((len(docs), 0), dtype=np.uint64)
    return DedupFeatures(repeated, keys, sigs)


def join_features(parts: list[DedupFeatures]) -> DedupFeatures:
    """The features of consecutive shards as those of one corpus (indices shifted).

    Each part's signatures are released once copied, so that a corpus's signatures are held once.
    """
    repeated: dict[int, str] = {}
    keys: list[int] = []
    width = parts[0].signatures.shape[1] if parts else 0
    sigs = np.empty((sum(len(p.signatures) for p in parts), width), dtype=np.uint64)
    start = 0
    for part in parts:
        repeated.update((start + i, detail) for i, detail in part.repeated.items())
        keys.extend(part.exact_keys)
        sigs[start : start + len(part.signatures)] = part.signatures
        start += len(part.signatures)
        part.signatures = part.signatures[:0]
    return DedupFeatures(repeated, keys, sigs)


def resolve_duplicates(features: DedupFeatures, cfg: DedupConfig) -> dict[int, tuple[str, int | None, str]]:
    """Global dedup over a corpus's features: ``{dropped index: (reason, kept index or None, detail)}``.

    Repetition first, then exact copies, then near-duplicates among what is left; first occurrences are kept.
    The signatures of the documents dropped before the near filter are overwritten with ``minhash.EMPTY``.
    """
    drops: dict[int, tuple[str, int | None, str]] = {i: (REPEATED_NGRAMS, None, d) for i, d in features.repeated.items()}
    if cfg.exact:
        first_with_key: dict[int, int] = {}
        for i, key in enumerate(features.exact_keys):
            if i in drops:
                continue
            original = first_with_key.setdefault(key, i)
            if original != i:
                drops[i] = (EXACT_DUPLICATE, original, "")
    if cfg.near:
        # A document already dropped must match nothing: an EMPTY signature never does, and overwriting
        # the signatures in place spares a copy of all the others.
        features.signatures[sorted(drops)] = minhash.EMPTY
        bands, rows = cfg.lsh_params()
        for dup, original in minhash.first_kept_duplicates(features.signatures, bands, rows, cfg.threshold).items():
            drops[dup] = (NEAR_DUPLICATE, original, "")
    return drops


def deduplicate(docs: list[Document], cfg: DedupConfig) -> DedupResult:
    """Drop repetitive documents, then exact and near-duplicates; first occurrences are kept."""
    check_unique_ids(docs)
    drops = resolve_duplicates(dedup_features(docs, cfg), cfg)
    dropped = [Drop(docs[i], reason, None if original is None else docs[original].id, detail)
               for i, (reason, original, detail) in sorted(drops.items())]
    return DedupResult(kept=[doc for i, doc in enumerate(docs) if i not in drops], dropped=dropped)


def check_unique_ids(docs: list[Document]) -> None:
    """Raise ValueError when two documents share an id: a drop must name its original unambiguously."""
    seen_ids: set[str] = set()
    for doc in docs:
        if doc.id in seen_ids:
            raise ValueError(f"dedup input has document id {doc.id!r} twice: ids must be unique so drops can name their original")
        seen_ids.add(doc.id)


def repetition_stats(tokens: minhash.Tokens, top_ns: list[int], dup_ns: list[int]) -> dict[str, np.ndarray]:
    """Gopher's n-gram repetition statistics of every document at once, each (D,) float.

    ``top_<n>gram_char_frac``: characters of the most repeated n-gram (occurring at least
    twice; count times its characters, maximised over n-grams) over the document's word
    characters. ``dup_<n>gram_char_frac``: word characters covered by occurrences of an
    n-gram after its first in the document (overlaps counted once), over the same total.
    Words and characters are those of :func:`tasks.data.minhash.words`.
    """
    num_docs, num_words = tokens.num_docs, len(tokens.word_hash)
    doc_of_word = tokens.doc_of_word()
    total_chars = np.bincount(doc_of_word, weights=tokens.word_chars, minlength=num_docs)
    denominator = np.where(total_chars > 0, total_chars, 1.0)
    char_prefix = np.concatenate([[0], np.cumsum(tokens.word_chars)])
    # One sort of 64-bit keys (document | n-gram hash | position in document) groups each
    # document's equal n-grams with their first occurrence leading, with no argsort (an
    # order of magnitude slower than np.sort here). Batches of documents keep >= 32 bits of hash.
    pos_bits = max(1, int(tokens.lengths.max(initial=1) - 1).bit_length())
    docs_per_batch = 1 << max(0, 32 - pos_bits)
    doc_bits = min(docs_per_batch - 1, max(num_docs - 1, 1)).bit_length()
    hash_bits = 64 - doc_bits - pos_bits
    hash_shift, doc_shift = np.uint64(64 - hash_bits), np.uint64(hash_bits + pos_bits)
    pos_mask, group_shift = np.uint64((1 << pos_bits) - 1), np.uint64(pos_bits)
    position_in_doc = np.arange(num_words) - tokens.offsets[:-1][doc_of_word]
    doc_and_position = ((doc_of_word % docs_per_batch).astype(np.uint64) << doc_shift) | position_in_doc.astype(np.uint64)
    stats = {f"top_{n}gram_char_frac": np.zeros(num_docs) for n in top_ns}
    stats |= {f"dup_{n}gram_char_frac": np.zeros(num_docs) for n in dup_ns}
    wanted = set(top_ns) | set(dup_ns)
    for n, hashes, complete in minhash.iter_ngram_hashes(tokens, max(wanted, default=0)):
        if n not in wanted:
            continue
        coverage = np.zeros(num_words + 1, dtype=np.int64)
        for first_doc in range(0, num_docs, docs_per_batch):
            lo, hi = tokens.offsets[first_doc], tokens.offsets[min(first_doc + docs_per_batch, num_docs)]
            full = complete[lo:hi]  # n-grams starting here have all n words in the document
            key = doc_and_position[lo:hi][full] | ((hashes[lo:hi][full] >> hash_shift) << group_shift)
            key.sort()
            lead = _run_starts(key >> group_shift)
            singleton = lead & np.append(lead[1:], True)
            key = key[~singleton]  # n-grams occurring twice or more
            lead = _run_starts(key >> group_shift)
            doc = first_doc + (key >> doc_shift).astype(np.int64)
            word = tokens.offsets[:-1][doc] + (key & pos_mask).astype(np.int64)
            if n in top_ns:
                count = np.diff(np.r_[np.flatnonzero(lead), len(key)])
                first, first_doc_of = word[lead], doc[lead]
                share = count * (char_prefix[first + n] - char_prefix[first]) / denominator[first_doc_of]
                np.maximum.at(stats[f"top_{n}gram_char_frac"], first_doc_of, share)
            if n in dup_ns:
                # +1 at each repeat's first word, -1 after its last: covered words have a positive sum.
                np.add.at(coverage, word[~lead], 1)
                np.add.at(coverage, word[~lead] + n, -1)
        if n in dup_ns:
            covered = np.cumsum(coverage[:num_words]) > 0
            dup_chars = np.bincount(doc_of_word[covered], weights=tokens.word_chars[covered], minlength=num_docs)
            stats[f"dup_{n}gram_char_frac"] = dup_chars / denominator
    return stats


def _run_starts(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values starts in a sorted array."""
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def repetitive(tokens: minhash.Tokens, cfg: DedupConfig) -> dict[int, str]:
    """Indices of documents breaking a repetition bound -> which statistic and by how much."""
    bounds: dict[str, float] = {f"top_{n}gram_char_frac": b for n, b in cfg.max_top_ngram_char_frac.items()}
    bounds |= {f"dup_{n}gram_char_frac": b for n, b in cfg.max_dup_ngram_char_frac.items()}
    stats = repetition_stats(tokens, sorted(cfg.max_top_ngram_char_frac), sorted(cfg.max_dup_ngram_char_frac))
    found: dict[int, str] = {}
    for name in sorted(bounds):
        for i in np.flatnonzero(stats[name] > bounds[name]).tolist():
            found.setdefault(i, f"{name}={stats[name][i]:.4f}>{bounds[name]}")
    return found

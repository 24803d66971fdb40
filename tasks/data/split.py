"""Deterministic train/validation/test split and the per-source training mixture.

Every random-looking choice is a salted hash mapped to [0, 1), ``h(salt, purpose, key)``, so the
same documents and config always give the same split, order and sample, on any machine, whatever
the order the documents come in.

- works (``group_by: work``): a document's record is its id before the last ``#`` (a text file's
  path, or ``file.jsonl:N`` for a jsonl or parquet record). Each record gets a MinHash signature
  (:mod:`tasks.data.minhash`, 256 permutations) of the word 5-grams of its documents; two records
  are one work when their estimated Jaccard is at least ``group_threshold``, transitively
  (union-find). A work's key is its smallest record id. Two editions of a play share few whole
  documents, so dedup keeps both, but they share many 13-grams: split apart, the held-out one
  would be largely in train.
- split (``group_by: work``): sources are visited in name order. Within a source, its works are
  ordered by ``h(salt, "split", key)``; a work already placed by an earlier source (it spans both)
  keeps its split and counts towards this source's. Then, in that order, whole works go to test
  until test holds at least ``test_fraction`` of the source's documents, then to validation until
  it holds ``validation_fraction``; a work that would take the split past twice its fraction is
  passed over for a later one, so one large work cannot swallow a source's training data (an
  empty split takes the smallest work when none fits). The rest go to train. The last work not
  yet placed always goes to train, and a source of fewer than 3 works is all train: holding out
  one work for each of test and validation needs a third to train on. So every source of at
  least 3 works has validation and test documents; a split can end below its fraction when every
  remaining work is too large.
- split (``group_by: document``): ``u = h(salt, "split", id)``; ``u < validation_fraction`` ->
  validation, then the next ``test_fraction`` -> test, the rest -> train. A document keeps its
  split when others come or go.
- mixture (train only; validation and test keep the corpus's natural mix): a document of a source
  with weight ``w`` appears ``floor(w)`` times, plus once more when ``h(salt, "mix", id) < w - floor(w)``.
  Copy ``k >= 1`` gets id ``<id>@<k>`` and ``meta["copy"] = k``. A document drawn zero times is
  quarantined as ``mixture_downsampled``.
- order: each split is sorted by ``h(salt, "order", id)``, which shuffles sources and copies together.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xxhash

from tasks.data import minhash
from tasks.data.config import MixtureConfig, SplitConfig
from tasks.data.document import SPLITS, Document
from tasks.data.ingest import Quarantined

WORK_SHINGLE_WORDS = 5  # group_threshold's measured values are for 5-grams
# 256 rather than dedup's 128 because the threshold is low: at 0.05 one permutation agreeing by
# chance moves the estimate by 0.004 instead of 0.008, and an edition pair (Jaccard >= 0.12)
# falls below 0.05 with probability about 1e-4 instead of 6e-3. Records are few, so it is cheap.
WORK_NUM_PERM = 256
WORK_SEED = 0
MIN_WORKS_TO_HOLD_OUT = 3


@dataclass
class SplitResult:
    """Documents per split in their stored order, those the mixture left out, and the split's groups."""

    splits: dict[str, list[Document]]
    quarantined: list[Quarantined]
    groups: dict[str, list[str]]  # group key -> its record ids (group_by=work) or [the document id] (document)


def unit_hash(salt: str, purpose: str, key: str) -> float:
    """A deterministic, uniform-looking number in [0, 1) for ``key``."""
    return xxhash.xxh64_intdigest(f"{salt}\0{purpose}\0{key}".encode()) / 2**64


def assign_split(doc_id: str, cfg: SplitConfig) -> str:
    """``train``, ``validation`` or ``test`` for a document id under ``group_by: document``."""
    u = unit_hash(cfg.salt, "split", doc_id)
    if u < cfg.validation_fraction:
        return "validation"
    if u < cfg.validation_fraction + cfg.test_fraction:
        return "test"
    return "train"


def record_id(doc: Document) -> str:
    """The record a document was cut from: its id before the last ``#``."""
    return doc.id.rsplit("#", 1)[0]


def _similar_pairs(column: Callable[[int], np.ndarray], threshold: float, order: np.ndarray) -> list[tuple[int, int]]:
    """Row pairs ``(i, j)``, ``i < j``, whose share of equal signature values is at least ``threshold``, sorted.

    ``column(c)`` is value c (of WORK_NUM_PERM) of every signature, rows taken in ``order``; a column at a
    time, so that the signatures never need to be in memory together.

    Only rows that share a value in some column can qualify (LSH with one row per band over every
    permutation), so pairs are counted from each column's runs of equal values instead of all pairs.
    Text shared by many records makes many pairs that share a value or two (tens of millions on a
    200 MB corpus), so pairs are not all held at once: each pass counts, in numpy, the pairs whose
    first row lies in one range of rows, and keeps those that reach the threshold.
    """
    rows = len(order)
    needed = threshold * WORK_NUM_PERM
    columns = [_shared_runs(column(c)[order]) for c in range(WORK_NUM_PERM)]
    total = sum(int(later.sum()) for _, later in columns)
    passes = max(1, -(-total // _PAIRS_PER_PASS))
    bounds = np.linspace(0, rows, passes + 1).astype(np.int64)
    similar = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        codes = np.concatenate([np.empty(0, dtype=np.int64), *(_run_pairs(members, later, lo, hi, rows)
                                                                 for members, later in columns)])
        found, counts = np.unique(codes, return_counts=True)
        similar.append(found[counts >= needed])
    pairs = np.concatenate(similar)
    return list(zip((pairs // max(rows, 1)).tolist(), (pairs % max(rows, 1)).tolist()))


# Pair codes (8 bytes each) counted at once by one pass of _similar_pairs.
_PAIRS_PER_PASS = 2_000_000


def _shared_runs(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``column``'s runs of two or more equal values, run after run with rows ascending within a
    run, and for each how many rows of its run follow it."""
    order = np.argsort(column, kind="stable")  # equal values keep row order: i < j within a run
    values = column[order]
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    ends = np.append(starts[1:], len(values))
    # A record without shingles has EMPTY everywhere: it resembles nothing.
    shared = (ends - starts > 1) & (values[starts] != minhash.EMPTY)
    starts, ends = starts[shared], ends[shared]
    lengths = ends - starts
    position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    return order[position].astype(np.int32), (np.repeat(ends, lengths) - position - 1).astype(np.int32)


def _run_pairs(members: np.ndarray, later: np.ndarray, lo: int, hi: int, rows: int) -> np.ndarray:
    """Codes ``i * rows + j`` of the pairs ``i < j`` within a run (see ``_shared_runs``) with ``lo <= i < hi``."""
    first = np.flatnonzero((members >= lo) & (members < hi) & (later > 0))
    count = later[first]
    left = np.repeat(first, count)
    step = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return members[left].astype(np.int64) * rows + members[left + 1 + step]


def document_work_signatures(docs: list[Document]) -> np.ndarray:
    """(D, WORK_NUM_PERM) MinHash signatures of each document's word 5-grams, for :func:`record_work_signatures`."""
    shingles, offsets = minhash.ngram_hashes(minhash.tokenize([d.text for d in docs]), WORK_SHINGLE_WORDS, short_docs=True)
    return minhash.signatures(shingles, offsets, WORK_NUM_PERM, WORK_SEED)


def record_starts(records: list[str]) -> list[int]:
    """Where each record's run starts in ``records`` (document i's record; a record's documents are contiguous)."""
    return [i for i in range(len(records)) if i == 0 or records[i] != records[i - 1]]


def record_work_signatures(records: list[str], doc_sigs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """One signature per record from its documents' (``records[i]`` is document i's record; a record's
    documents are contiguous): ``(distinct records in order, (R, WORK_NUM_PERM))``.

    A signature is a minimum over a set of shingles, so a record's is the element-wise minimum of its
    documents', and shards can sign their documents apart.
    """
    starts = record_starts(records)
    if not starts:
        return [], np.empty((0, WORK_NUM_PERM), dtype=np.uint64)
    return [records[i] for i in starts], np.minimum.reduceat(doc_sigs, starts, axis=0)


def group_works(records: list[str], column: Callable[[int], np.ndarray], threshold: float) -> dict[str, str]:
    """Record id -> key of its work (the smallest record id of the work), from one signature per record:
    ``column(c)`` is value c (of WORK_NUM_PERM) of every record's signature, in the order of ``records``."""
    order = sorted(range(len(records)), key=records.__getitem__)
    records = [records[i] for i in order]
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _similar_pairs(column, threshold, np.asarray(order, dtype=np.int64)):
        a, b = root(i), root(j)
        # the smaller index is the root, so a work's root is its smallest record id
        parent[max(a, b)] = min(a, b)
    return {r: records[root(i)] for i, r in enumerate(records)}


def work_groups(docs: list[Document], threshold: float) -> dict[str, str]:
    """Record id -> key of its work (the smallest record id of the work); see the module docstring."""
    # A record's documents must be contiguous for one signature per record.
    ordered = sorted(docs, key=record_id)
    records, sigs = record_work_signatures([record_id(d) for d in ordered], document_work_signatures(ordered))
    return group_works(records, lambda c: sigs[:, c], threshold)


def assign_groups(docs: list[Document], group_of: dict[str, str], cfg: SplitConfig) -> dict[str, str]:
    """Group key -> split: per source, whole groups fill test, then validation (see the module docstring).

    ``group_of`` maps each document id to its group key. Sorting a source's groups costs n log n;
    filling a split is one forward scan, so the whole assignment is n log n in documents.
    """
    sizes: dict[str, Counter[str]] = defaultdict(Counter)  # source -> group -> documents
    for doc in docs:
        sizes[doc.source][group_of[doc.id]] += 1
    split_of: dict[str, str] = {}
    for source in sorted(sizes):
        here = sizes[source]
        ordered = sorted(here, key=lambda g: (unit_hash(cfg.salt, "split", g), g))
        held: Counter[str] = Counter()
        for group in ordered:
            if group in split_of:
                held[split_of[group]] += here[group]
        pending = [g for g in ordered if g not in split_of]
        placed = [False] * len(pending)  # placed[i]: pending[i] went to a held-out split
        left = len(pending)
        total = sum(here.values())
        if len(ordered) >= MIN_WORKS_TO_HOLD_OUT:
            for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
                # A work that would take the split past twice its share is passed over for a later
                # one, so one large work cannot swallow a source's training data. The split only
                # grows, so a work passed over never fits again: the next work to take is found by
                # moving ``cursor`` forward, never back.
                cursor = 0
                while left > 1 and held[split] < fraction * total:
                    while cursor < len(pending) and (
                        placed[cursor] or held[split] + here[pending[cursor]] > 2 * fraction * total
                    ):
                        cursor += 1
                    if cursor < len(pending):
                        index = cursor
                    elif held[split]:
                        break
                    else:  # an empty split still takes the smallest work, so every source is held out
                        index = min((i for i in range(len(pending)) if not placed[i]), key=lambda i: here[pending[i]])
                    placed[index] = True
                    left -= 1
                    split_of[pending[index]] = split
                    held[split] += here[pending[index]]
        split_of.update((group, "train") for group, done in zip(pending, placed) if not done)
    return split_of


def copies(doc_id: str, weight: float, salt: str) -> int:
    """How many times a training document of a source with ``weight`` appears."""
    whole = math.floor(weight)
    return whole + int(unit_hash(salt, "mix", doc_id) < weight - whole)


def split_and_mix(docs: list[Document], cfg: SplitConfig, mixture: MixtureConfig,
                  work_of: dict[str, str] | None = None) -> SplitResult:
    """Assign every document to a split and apply the training mixture (see the module docstring).

    ``work_of`` (record id -> work key, from :func:`group_works`) is for documents given without their
    text, whose works were found shard by shard; by default group_by=work finds them from the texts.
    """
    sources = {d.source for d in docs}
    unknown = sorted(set(mixture.weights) - sources)
    if unknown:
        raise ValueError(
            f"data.mixture.weights names sources {unknown} that are not in the corpus; "
            f"its sources are {sorted(sources)}"
        )
    if cfg.group_by == "work":
        if work_of is None:
            work_of = work_groups(docs, cfg.group_threshold)
        group_of = {d.id: work_of[record_id(d)] for d in docs}
        split_of_group = assign_groups(docs, group_of, cfg)
        split_of = {doc_id: split_of_group[group] for doc_id, group in group_of.items()}
        groups: dict[str, list[str]] = defaultdict(list)
        for record, work in sorted(work_of.items()):
            groups[work].append(record)
    else:
        split_of = {d.id: assign_split(d.id, cfg) for d in docs}
        groups = {d.id: [d.id] for d in docs}

    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    quarantined = []
    for doc in docs:
        split = split_of[doc.id]
        if split != "train":
            splits[split].append(doc)
            continue
        weight = mixture.weights.get(doc.source, 1.0)
        n = copies(doc.id, weight, cfg.salt)
        if n == 0:
            quarantined.append(Quarantined(doc.id, doc.source, "mixture_downsampled", detail=f"source weight {weight}"))
            continue
        splits["train"].append(doc)
        splits["train"].extend(Document(f"{doc.id}@{k}", doc.source, doc.text, {**doc.meta, "copy": k}) for k in range(1, n))
    for name, members in splits.items():
        members.sort(key=lambda d: unit_hash(cfg.salt, "order", d.id))
    return SplitResult(splits, quarantined, dict(sorted(groups.items())))

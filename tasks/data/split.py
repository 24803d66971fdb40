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

import itertools
import math
from collections import Counter, defaultdict
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


def _similar_pairs(sigs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Row pairs ``(i, j)``, ``i < j``, whose share of equal signature values is at least ``threshold``.

    Only rows that share a value in some column can qualify (LSH with one row per band over every
    permutation), so pairs are counted from each column's runs of equal values instead of all pairs.
    """
    shared: Counter[tuple[int, int]] = Counter()
    for column in sigs.T:
        order = np.argsort(column, kind="stable")
        values = column[order]
        starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
        ends = np.append(starts[1:], len(values))
        # Most values are a single record's; only runs of two or more reach the Python loop. A
        # record without shingles has EMPTY everywhere: it resembles nothing.
        shared_run = (ends - starts > 1) & (values[starts] != minhash.EMPTY)
        for lo, hi in zip(starts[shared_run].tolist(), ends[shared_run].tolist()):
            shared.update(itertools.combinations(sorted(order[lo:hi].tolist()), 2))
    needed = threshold * sigs.shape[1]
    return sorted(pair for pair, count in shared.items() if count >= needed)


def work_groups(docs: list[Document], threshold: float) -> dict[str, str]:
    """Record id -> key of its work (the smallest record id of the work); see the module docstring."""
    records = sorted({record_id(d) for d in docs})
    index = {r: i for i, r in enumerate(records)}
    # A record's documents must be contiguous for one signature per record; their order within it
    # does not matter, since a signature is a minimum over a set of shingles.
    ordered = sorted(docs, key=lambda d: index[record_id(d)])
    shingles, doc_offsets = minhash.ngram_hashes(
        minhash.tokenize([d.text for d in ordered]), WORK_SHINGLE_WORDS, short_docs=True
    )
    docs_per_record = np.bincount([index[record_id(d)] for d in ordered], minlength=len(records))
    record_offsets = doc_offsets[np.concatenate([[0], np.cumsum(docs_per_record)])]
    sigs = minhash.signatures(shingles, record_offsets, WORK_NUM_PERM, WORK_SEED)
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _similar_pairs(sigs, threshold):
        a, b = root(i), root(j)
        # the smaller index is the root, so a work's root is its smallest record id
        parent[max(a, b)] = min(a, b)
    return {r: records[root(i)] for i, r in enumerate(records)}


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


def split_and_mix(docs: list[Document], cfg: SplitConfig, mixture: MixtureConfig) -> SplitResult:
    """Assign every document to a split and apply the training mixture (see the module docstring)."""
    sources = {d.source for d in docs}
    unknown = sorted(set(mixture.weights) - sources)
    if unknown:
        raise ValueError(
            f"data.mixture.weights names sources {unknown} that are not in the corpus; "
            f"its sources are {sorted(sources)}"
        )
    if cfg.group_by == "work":
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

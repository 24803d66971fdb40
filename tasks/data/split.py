"""Deterministic train/validation/test split and the per-source training mixture.

Every random-looking choice is a salted hash of the document id mapped to [0, 1), so the same
documents and config always give the same split, order and sample, on any machine:

- split: ``u = h(salt, "split", id)``; ``u < validation_fraction`` -> validation, then the next
  ``test_fraction`` -> test, the rest -> train. A document keeps its split when others come or go.
- mixture (train only; validation and test keep the corpus's natural mix): a document of a source
  with weight ``w`` appears ``floor(w)`` times, plus once more when ``h(salt, "mix", id) < w - floor(w)``.
  Copy ``k >= 1`` gets id ``<id>@<k>`` and ``meta["copy"] = k``. A document drawn zero times is
  quarantined as ``mixture_downsampled``.
- order: each split is sorted by ``h(salt, "order", id)``, which shuffles sources and copies together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import xxhash

from tasks.data.config import MixtureConfig, SplitConfig
from tasks.data.document import SPLITS, Document
from tasks.data.ingest import Quarantined


@dataclass
class SplitResult:
    """Documents per split in their stored order, and those the mixture left out."""

    splits: dict[str, list[Document]]
    quarantined: list[Quarantined]


def unit_hash(salt: str, purpose: str, key: str) -> float:
    """A deterministic, uniform-looking number in [0, 1) for ``key``."""
    return xxhash.xxh64_intdigest(f"{salt}\0{purpose}\0{key}".encode()) / 2**64


def assign_split(doc_id: str, cfg: SplitConfig) -> str:
    """``train``, ``validation`` or ``test`` for a document id."""
    u = unit_hash(cfg.salt, "split", doc_id)
    if u < cfg.validation_fraction:
        return "validation"
    if u < cfg.validation_fraction + cfg.test_fraction:
        return "test"
    return "train"


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
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    quarantined = []
    for doc in docs:
        split = assign_split(doc.id, cfg)
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
    return SplitResult(splits, quarantined)

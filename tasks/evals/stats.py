"""Statistics of eval scores: ratio metrics, paired differences between two models, and the power of a suite.

Two models scored on the same items are compared item by item. Most of the variance of an
eval score comes from the items (some are hard for every model), and the two models share it;
a paired comparison removes it, where a comparison of two scores with their own standard
errors counts it twice (Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640, sec. 4).

- **Per-item results** (:class:`ItemScores`): each item's score (accuracy, exact match), or each
  document's ``(loglikelihood, count)`` pair for the ratio metrics lm-eval aggregates as
  ``-sum(loglikelihood) / sum(count)`` transformed (bits per byte, byte and word perplexity).
- **Paired bootstrap** over items (Koehn 2004, "Statistical Significance Tests for Machine
  Translation Evaluation", EMNLP; Efron & Tibshirani 1993, *An Introduction to the Bootstrap*,
  ch. 13 for the percentile interval): the same resampled items for both models, the metric of
  each recomputed on them, the difference taken. For a ratio metric that is the difference of
  the pooled ratios, so per-document bits-per-byte differences weigh as lm-eval's aggregation does.
- **Minimum detectable effect** (Miller 2024, sec. 5; the paired form of the textbook sample
  size formula): a gate that fails a candidate unless its interval's worse end stays within
  the margin passes a candidate no worse than the champion with probability ``power`` only if
  ``(z_{(1+confidence)/2} + z_{power}) x se <= margin``. That left side is the smallest
  regression the suite can tell from none; since ``se`` shrinks as ``1 / sqrt(items)``, it also
  says how many items would bring it down to the margin.

Signal and Noise (Heineman et al. 2025, arXiv 2508.13144) is why this matters: a benchmark
whose noise exceeds the differences between models misleads the decisions made on it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

# Aggregations lm-eval reports as -sum(loglikelihood) / sum(count), transformed: value of the
# mean negative log-likelihood per unit (nats), and its derivative for the delta method.
RATIO_METRICS = {
    "bits_per_byte": (lambda r: r / math.log(2), lambda r: 1 / math.log(2)),
    "byte_perplexity": (np.exp, np.exp),
    "word_perplexity": (np.exp, np.exp),
}
# Bootstrap draws held in memory at once: (draws, items) indices.
_CHUNK = 256


def ratio_metric(pairs: list[tuple[float, float]], metric: str) -> tuple[float, float | None]:
    """``(value, stderr)`` of a ratio metric from per-document ``(loglikelihood, count)`` pairs.

    The ratio r = sum(-ll) / sum(count) is a ratio estimator; its delta-method variance is
    sum((-ll_i - r * count_i)^2) / (n (n-1) mean(count)^2). One document gives no stderr.
    """
    transform, slope = RATIO_METRICS[metric]
    nll = -np.asarray([p[0] for p in pairs], dtype=np.float64)
    count = np.asarray([p[1] for p in pairs], dtype=np.float64)
    if count.sum() <= 0:
        raise ValueError(f"{metric}: the scored documents have no {'bytes' if 'byte' in metric else 'words'}")
    r = float(nll.sum() / count.sum())
    n = len(pairs)
    if n < 2:
        return float(transform(r)), None
    se_r = math.sqrt(((nll - r * count) ** 2).sum() / (n * (n - 1))) / float(count.mean())
    return float(transform(r)), float(abs(slope(r)) * se_r)


@dataclass(frozen=True)
class ItemScores:
    """One metric of one model, item by item, as lm-eval logged it.

    ``values`` are the items' scores (the metric is their mean), or for a ratio metric the
    documents' log-likelihoods, with ``counts`` their bytes or words (the metric is then
    ``RATIO_METRICS[metric]`` of sum(-values) / sum(counts)).
    """

    metric: str  # lm-eval's metric name: acc, exact_match, bits_per_byte, ...
    ids: tuple[str, ...]
    values: tuple[float, ...]
    counts: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.counts is None) == (self.metric in RATIO_METRICS):
            raise ValueError(f"{self.metric}: counts are given exactly for the ratio metrics {sorted(RATIO_METRICS)}")
        if len(set(self.ids)) != len(self.ids) or len(self.values) != len(self.ids):
            raise ValueError(f"{self.metric}: item ids must be distinct, one per value")
        if self.counts is not None and len(self.counts) != len(self.ids):
            raise ValueError(f"{self.metric}: one count per item")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "ids": list(self.ids), "values": list(self.values),
                "counts": None if self.counts is None else list(self.counts)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ItemScores:
        counts = raw["counts"]
        return cls(raw["metric"], tuple(raw["ids"]), tuple(raw["values"]), None if counts is None else tuple(counts))

    def aligned_to(self, ids: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(values, counts)`` in the order of ``ids``, which must be exactly this model's items."""
        if set(ids) != set(self.ids):
            missing, extra = set(ids) - set(self.ids), set(self.ids) - set(ids)
            raise ValueError(
                f"{self.metric}: the two models were scored on different items ({len(missing)} missing, {len(extra)} extra, "
                f"e.g. {sorted(missing or extra)[:3]}): pair them only on the same eval suite"
            )
        position = {item: i for i, item in enumerate(self.ids)}
        order = np.fromiter((position[item] for item in ids), dtype=np.int64, count=len(ids))
        values = np.asarray(self.values, dtype=np.float64)[order]
        return values, None if self.counts is None else np.asarray(self.counts, dtype=np.float64)[order]


# "<task>/<metric>" -> that metric's per-item results: everything of one model on one suite.
ItemResults = dict[str, ItemScores]


def item_results_to_dict(results: ItemResults) -> dict[str, dict[str, Any]]:
    """The form stored as an eval run's per-item artifact."""
    return {name: scores.to_dict() for name, scores in sorted(results.items())}


def item_results_from_dict(raw: dict[str, dict[str, Any]]) -> ItemResults:
    return {name: ItemScores.from_dict(scores) for name, scores in raw.items()}


def z_quantile(probability: float) -> float:
    """The standard normal quantile."""
    return NormalDist().inv_cdf(probability)


def detectable_effect(stderr: float, confidence: float, power: float) -> float:
    """The smallest true worsening a non-inferiority check at ``confidence`` detects with probability ``power``."""
    return (z_quantile((1 + confidence) / 2) + z_quantile(power)) * stderr


def items_needed(items: int, detectable: float, margin: float) -> int | None:
    """Items for which the detectable effect, shrinking as 1/sqrt(items), would reach ``margin`` (at least ``items``).

    None when no number would: a margin of 0 with models that disagree on some item.
    """
    if detectable <= margin:
        return items
    if margin <= 0:
        return None
    return math.ceil(items * (detectable / margin) ** 2)


@dataclass(frozen=True)
class PairedDifference:
    """Candidate minus reference on one metric, over the items both were scored on.

    ``low``/``high`` bound the difference at ``confidence`` (percentile paired bootstrap);
    ``stderr`` is the bootstrap's standard deviation of the difference.
    """

    metric: str
    items: int
    difference: float
    low: float
    high: float
    stderr: float
    confidence: float

    def detectable(self, power: float) -> float:
        """This suite's minimum detectable effect on the metric (see the module docstring)."""
        return detectable_effect(self.stderr, self.confidence, power)


def _metric_of(metric: str, values: np.ndarray, counts: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The metric recomputed on each resample: ``weights`` (draws, items) counts how often each item was drawn."""
    if counts is None:
        return weights @ values / weights.sum(axis=1)
    return RATIO_METRICS[metric][0](weights @ -values / (weights @ counts))


def paired_difference(
    name: str, candidate: ItemScores, reference: ItemScores, confidence: float, iterations: int
) -> PairedDifference:
    """The paired bootstrap of candidate minus reference on metric ``name`` (``<task>/<metric>``).

    The draws are seeded by the metric's name: the same scores always give the same interval,
    so a gate decision is reproducible.
    """
    ids = reference.ids
    ref_values, counts = reference.aligned_to(ids)
    cand_values, cand_counts = candidate.aligned_to(ids)
    if counts is not None and not np.array_equal(counts, cand_counts):
        raise ValueError(f"{name}: the two models counted different bytes or words in the same documents")
    n = len(ids)
    everything = np.ones((1, n))
    difference = float(_metric_of(candidate.metric, cand_values, counts, everything)[0]
                       - _metric_of(reference.metric, ref_values, counts, everything)[0])
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    draws = []
    for start in range(0, iterations, _CHUNK):
        size = min(_CHUNK, iterations - start)
        weights = rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float64)
        draws.append(_metric_of(candidate.metric, cand_values, counts, weights)
                     - _metric_of(reference.metric, ref_values, counts, weights))
    sample = np.concatenate(draws)
    low, high = np.quantile(sample, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedDifference(name, n, difference, float(low), float(high), float(sample.std(ddof=1)), confidence)

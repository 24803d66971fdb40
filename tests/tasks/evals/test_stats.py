"""Paired differences of per-item scores: lm-eval's aggregation, the bootstrap's spread, and the detectable effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lm_eval.api.metrics import bits_per_byte

from tasks.evals.stats import ItemScores, detectable_effect, items_needed, paired_difference


def _accuracy(values: np.ndarray, prefix: str = "q") -> ItemScores:
    return ItemScores("acc", tuple(f"{prefix}{i}" for i in range(len(values))), tuple(map(float, values)))


def test_paired_difference_of_a_mean_metric_has_the_spread_of_the_per_item_differences() -> None:
    rng = np.random.default_rng(0)
    reference = (rng.random(400) < 0.6).astype(float)
    candidate = reference.copy()
    flipped = rng.choice(np.flatnonzero(reference == 1), 20, replace=False)
    candidate[flipped] = 0  # 20 of 400 items lost: the candidate is 0.05 worse
    paired = paired_difference("cloze/acc", _accuracy(candidate), _accuracy(reference), 0.95, 2000)
    assert paired.difference == pytest.approx(-0.05)
    per_item = candidate - reference
    assert paired.stderr == pytest.approx(per_item.std(ddof=1) / math.sqrt(len(per_item)), rel=0.1)
    assert paired.low < -0.05 < paired.high < 0
    # Unpaired, the two scores' own standard errors would make the interval three times wider.
    unpaired = math.sqrt(candidate.var(ddof=1) / 400 + reference.var(ddof=1) / 400)
    assert unpaired > 3 * paired.stderr
    # The order of the items does not matter: they are paired by id.
    shuffled = ItemScores("acc", tuple(reversed(_accuracy(candidate).ids)), tuple(reversed(candidate.tolist())))
    assert paired_difference("cloze/acc", shuffled, _accuracy(reference), 0.95, 2000) == paired


def test_identical_scores_differ_by_exactly_nothing() -> None:
    same = _accuracy(np.array([1.0, 0.0, 1.0, 1.0]))
    paired = paired_difference("cloze/acc", same, same, 0.95, 500)
    assert (paired.difference, paired.low, paired.high, paired.stderr, paired.detectable(0.8)) == (0, 0, 0, 0, 0)


def test_a_ratio_metric_is_paired_per_document_as_lm_eval_pools_it() -> None:
    rng = np.random.default_rng(1)
    count = rng.integers(500, 3000, size=30).astype(float)
    reference = -count * rng.normal(1.9, 0.2, size=30)
    candidate = reference - count * rng.normal(0.02, 0.005, size=30)  # every document a little worse
    ids = tuple(f"doc{i}" for i in range(30))
    paired = paired_difference(
        "ppl/bits_per_byte", ItemScores("bits_per_byte", ids, tuple(candidate), tuple(count)),
        ItemScores("bits_per_byte", ids, tuple(reference), tuple(count)), 0.95, 2000,
    )
    expected = bits_per_byte(list(zip(candidate, count))) - bits_per_byte(list(zip(reference, count)))
    assert paired.difference == pytest.approx(expected, rel=1e-12)
    assert 0 < paired.low < expected < paired.high


def test_detectable_effect_and_the_items_it_needs() -> None:
    # (z_0.975 + z_0.8) = 1.96 + 0.84
    assert detectable_effect(0.01, 0.95, 0.8) == pytest.approx(0.0280, abs=1e-4)
    # Halving the detectable effect takes four times the items.
    assert items_needed(100, 0.04, 0.02) == 400
    assert items_needed(100, 0.01, 0.02) == 100
    assert items_needed(100, 0.01, 0.0) is None and items_needed(100, 0.0, 0.0) == 100


def test_items_scored_differently_are_not_paired() -> None:
    with pytest.raises(ValueError, match="different items"):
        paired_difference("cloze/acc", _accuracy(np.ones(3), "a"), _accuracy(np.ones(3), "b"), 0.95, 100)
    with pytest.raises(ValueError, match="counts are given exactly for the ratio metrics"):
        ItemScores("bits_per_byte", ("d",), (-1.0,))

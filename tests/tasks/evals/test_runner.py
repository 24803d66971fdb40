"""Standard errors ladder adds to lm-eval's ratio metrics, and the pooled held-out perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

from tasks.evals.runner import metric_table
from tasks.evals.stats import ratio_metric


def _pairs(seed: int, n: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    count = rng.integers(200, 2000, size=n)
    return [(-float(c * rng.normal(0.9, 0.1)), float(c)) for c in count]


def test_ratio_metrics_equal_lm_evals_and_their_stderr_matches_the_bootstrap() -> None:
    pairs = _pairs(0, 40)
    for metric, lm_eval_value in (("bits_per_byte", bits_per_byte(pairs)), ("byte_perplexity", weighted_perplexity(pairs))):
        value, stderr = ratio_metric(pairs, metric)
        assert value == pytest.approx(lm_eval_value, rel=1e-12)
        rng = np.random.default_rng(1)
        draws = [ratio_metric([pairs[i] for i in rng.integers(0, len(pairs), len(pairs))], metric)[0] for _ in range(2000)]
        assert stderr == pytest.approx(float(np.std(draws)), rel=0.15)
    assert ratio_metric(pairs[:1], "bits_per_byte")[1] is None


def test_table_pools_the_per_source_documents() -> None:
    verse, prose = _pairs(2, 5), _pairs(3, 7)

    class FakeSuite:
        tasks = ["ladder_ppl_verse", "ladder_ppl_prose"]
        higher_is_better = {f"{t}/bits_per_byte": False for t in ("ladder_ppl", *tasks)}

    results = {
        "results": {
            "ladder_ppl_verse": {"bits_per_byte,none": bits_per_byte(verse), "bits_per_byte_stderr,none": "N/A"},
            "ladder_ppl_prose": {"bits_per_byte,none": bits_per_byte(prose), "bits_per_byte_stderr,none": "N/A"},
        },
        "n-samples": {"ladder_ppl_verse": {"effective": 5}, "ladder_ppl_prose": {"effective": 7}},
    }
    samples = {
        "ladder_ppl_verse": [{"bits_per_byte": p} for p in verse],
        "ladder_ppl_prose": [{"bits_per_byte": p} for p in prose],
    }
    table = metric_table(results, samples, FakeSuite())
    assert table["ladder_ppl/bits_per_byte"].value == pytest.approx(bits_per_byte(verse + prose))
    assert table["ladder_ppl/bits_per_byte"].items == 12
    assert table["ladder_ppl_verse/bits_per_byte"].stderr == pytest.approx(ratio_metric(verse, "bits_per_byte")[1])
    assert all(math.isfinite(m.stderr) for m in table.values())

"""AI2's two steps on synthetic rungs drawn from a known law, task-loss line and sigmoid: recovered, and covered by the interval."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evals.runner import Metric
from tasks.scaling.analysis import LadderFit, fit_scaling_law
from tasks.scaling.config import ScalingFitConfig, TaskScoresConfig
from tasks.scaling.task_scores import (
    SelfCheck,
    SigmoidGrid,
    TaskItems,
    TaskPrediction,
    compare_task_scores,
    fit_line,
    fit_sigmoid,
    predict_task_scores,
    sigmoid,
    task_score_line,
)

E, A, B, ALPHA, BETA = 1.5, 20.0, 40.0, 0.35, 0.30
INTERCEPT, SLOPE = 0.8, 1.6  # step 1: task loss = INTERCEPT + SLOPE x reducible loss
K, FLOOR = 2.0, 0.25  # step 2's steepness and chance floor; its midpoint sits among the rungs
RUNGS = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
TARGET = (6.4e5, 20 * 6.4e5)


def _reducible(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return A / n**ALPHA + B / d**BETA


@pytest.fixture(scope="module")
def ladder() -> LadderFit:
    """The loss law fitted to noiseless points of each rung along its run."""
    n = np.repeat(RUNGS, 4)
    d = n * np.tile([5.0, 10.0, 15.0, 20.0], len(RUNGS))
    return fit_scaling_law.fn(n, d, E + _reducible(n, d), ScalingFitConfig(bootstrap_samples=10))


def _task_loss(n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
    return INTERCEPT + SLOPE * _reducible(np.asarray(n), np.asarray(d))


def _items(midpoint: float, count: int, seed: int = 0) -> TaskItems:
    """``count`` items per rung whose pooled bits per byte is the task loss and whose accuracy follows the sigmoid."""
    rng = np.random.default_rng(seed)
    loss = _task_loss(RUNGS, 20 * RUNGS)
    nbytes = rng.integers(5, 30, size=(len(RUNGS), count)).astype(float)
    bits = loss[:, None] * nbytes * rng.uniform(0.5, 1.5, size=nbytes.shape)
    bits *= (loss * nbytes.sum(1) / bits.sum(1))[:, None]  # pooled exactly at the rung's task loss
    correct = rng.random(nbytes.shape) < sigmoid(loss, K, midpoint, FLOOR)[:, None]
    return TaskItems("ladder_next_line", "acc_norm", bits, nbytes, correct.astype(float), FLOOR)


def test_line_and_sigmoid_fits_recover_their_parameters() -> None:
    x = np.array([[0.1, 0.4, 0.9, 1.3]])
    intercept, slope = fit_line(x, 0.8 + 1.6 * x)
    assert intercept[0] == pytest.approx(0.8) and slope[0] == pytest.approx(1.6)
    loss = np.linspace(1.0, 2.0, 6)[None, :]
    grid = SigmoidGrid.around(loss)
    k, midpoint = fit_sigmoid(loss, sigmoid(loss, 5.0, 1.4, 0.25), 0.25, grid)
    assert k[0] == pytest.approx(5.0, rel=0.1) and midpoint[0] == pytest.approx(1.4, abs=0.02)


def test_two_steps_recover_the_laws_and_the_interval_covers_the_target(ladder: LadderFit) -> None:
    loss = _task_loss(RUNGS, 20 * RUNGS)
    midpoint = float(np.median(loss))
    (prediction,) = predict_task_scores(
        [_items(midpoint, 4000)], ladder, (RUNGS, 20 * RUNGS), TARGET, TaskScoresConfig(bootstrap_samples=100),
        {"ladder_next_line/acc_norm": True},
    )
    assert prediction.params["intercept"] == pytest.approx(INTERCEPT, rel=0.05)
    assert prediction.params["slope"] == pytest.approx(SLOPE, rel=0.05)
    assert prediction.params["k"] == pytest.approx(K, rel=0.3)
    assert prediction.params["midpoint"] == pytest.approx(midpoint, abs=0.05)
    true_loss = float(_task_loss(*TARGET))
    truth = float(sigmoid(true_loss, K, midpoint, FLOOR))
    assert prediction.task_loss == pytest.approx(true_loss, rel=0.02)
    assert prediction.low <= truth <= prediction.high and prediction.high - prediction.low < 0.2
    assert prediction.predicted == pytest.approx(truth, abs=0.03)
    # The self-check predicts the top rung from the four below it.
    check = prediction.self_check
    assert check.inside and abs(check.error) < 0.05
    assert not prediction.limits
    assert TaskPrediction.from_dict(prediction.to_dict()) == prediction


def test_rungs_all_at_chance_leave_the_sigmoid_unidentified_and_say_so(ladder: LadderFit) -> None:
    # The midpoint far below every rung's loss: every rung scores chance, nothing bends.
    (prediction,) = predict_task_scores(
        [_items(0.0, 400)], ladder, (RUNGS, 20 * RUNGS), TARGET, TaskScoresConfig(bootstrap_samples=50),
        {"ladder_next_line/acc_norm": True}, law_limits=("E unidentified, at its bound",),
    )
    assert any("sigmoid" in limit for limit in prediction.limits)
    assert "loss law: E unidentified, at its bound" in prediction.limits


def _prediction(predicted: float, low: float, high: float) -> TaskPrediction:
    return TaskPrediction("ladder_next_line", "acc_norm", predicted, low, high, 0.9, True, 2.0, {}, 64,
                          SelfCheck(0.3, 0.25, 0.35, 0.31))


def test_comparison_widens_by_the_measurement_error() -> None:
    rows = compare_task_scores(
        [_prediction(0.40, 0.38, 0.42)], {"ladder_next_line/acc_norm": Metric(0.45, 0.02, True, 256)}
    )
    (row,) = rows
    assert row.low < 0.38 and 0.42 < row.high < 0.45  # widened by 1.645 x 0.02 in quadrature, still missed
    assert row.error == pytest.approx(0.05) and row.inside is False
    assert "OUTSIDE" in task_score_line(row)
    (unmeasured,) = compare_task_scores([_prediction(0.40, 0.38, 0.42)], {})
    assert unmeasured.inside is None and "not measured" in task_score_line(unmeasured)

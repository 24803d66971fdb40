"""The scaling-law fit: the paper check, recovery, frontier, bootstrap, self-check and gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ladder.config import build
from ladder.figures import write_png
from tasks.scaling.analysis import fit_scaling_law
from tasks.scaling.config import PAPER_GRID, ScalingFitConfig
from tasks.scaling.fit import (
    FidelityRow,
    Intervals,
    Prediction,
    bootstrap,
    compute_optimal,
    effective_tokens,
    fit_chinchilla,
    frontier_exponents,
    gate,
    holdout_check,
    predict,
    unidentified,
)
from tasks.scaling.plots import (
    fidelity_markdown,
    plot_loss_vs_compute,
    plot_predicted_vs_actual,
    summary_markdown,
)

# Hoffmann et al. 2022, Approach 3.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TARGET = (7e10, 1.4e12)  # Chinchilla itself


def chinchilla_loss(n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
    c = CHINCHILLA
    return c["E"] + c["A"] / np.power(n, c["alpha"]) + c["B"] / np.power(d, c["beta"])


def ladder_points(rungs: int, evals: int, noise: float = 0.0, seed: int = 0):
    """Rungs log-spaced over the paper's N range, each evaluated at log-spaced D over its D range."""
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(7e7, 1.6e10, rungs), np.geomspace(5e9, 5e11, evals)))
    loss = chinchilla_loss(n, d) * (1 + noise * np.random.default_rng(seed).standard_normal(n.size))
    return n, d, loss


@pytest.fixture(scope="module")
def noisy():
    """The paper check's data: 40 rungs x 40 evaluations, 1% multiplicative noise, and its fit.

    With 1% noise the exponents' spread shrinks with the number of points; at 40 x 40 every one
    of 30 seeds tried recovered both within 0.02 (at 8 x 8 only a fifth did).
    """
    n, d, loss = ladder_points(40, 40, noise=0.01, seed=0)
    return n, d, loss, fit_chinchilla(n, d, loss)


def test_paper_check_recovers_exponents_and_predicts_chinchilla(noisy):
    n, d, loss, fit = noisy
    assert fit.converged, fit.message
    assert fit.starts_at_best > 1
    assert abs(fit.alpha - CHINCHILLA["alpha"]) < 0.02
    assert abs(fit.beta - CHINCHILLA["beta"]) < 0.02
    assert fit.loss(*TARGET) == pytest.approx(chinchilla_loss(*TARGET), rel=0.01)
    assert fit.rmse_rel == pytest.approx(0.01, rel=0.1)  # the noise, no more
    assert fit.r2_log_loss > 0.98


def test_noise_free_points_recover_every_parameter():
    fit = fit_chinchilla(*ladder_points(8, 8))
    assert fit.converged, fit.message
    for name, value in fit.params().items():
        assert value == pytest.approx(CHINCHILLA[name], rel=1e-3), name
    assert fit.rmse_rel < 1e-5
    assert fit.r2_log_loss == pytest.approx(1.0, abs=1e-8)


def test_frontier_follows_the_fit_exponents_and_minimises_loss_at_fixed_compute():
    fit = fit_chinchilla(*ladder_points(8, 8))
    budgets = np.array([1e20, 1e22, 1e24])
    optimal = compute_optimal(fit, budgets)
    exp_n, exp_d = frontier_exponents(fit)
    assert exp_n == pytest.approx(fit.beta / (fit.alpha + fit.beta))
    assert exp_d == pytest.approx(fit.alpha / (fit.alpha + fit.beta))
    slopes_n = np.diff(np.log(optimal.n_params)) / np.diff(np.log(budgets))
    slopes_d = np.diff(np.log(optimal.n_tokens)) / np.diff(np.log(budgets))
    np.testing.assert_allclose(slopes_n, exp_n, rtol=1e-9)
    np.testing.assert_allclose(slopes_d, exp_d, rtol=1e-9)
    np.testing.assert_allclose(6 * optimal.n_params * optimal.n_tokens, budgets, rtol=1e-9)
    for budget, n_opt, loss in zip(budgets, optimal.n_params, optimal.loss):
        for shift in (0.9, 1.1):
            n_other = n_opt * shift
            assert fit.loss(n_other, budget / (6 * n_other)) > loss
    scalar = compute_optimal(fit, 1e22)
    assert isinstance(scalar.loss, float) and scalar.loss == pytest.approx(optimal.loss[1])


def test_bootstrap_is_seeded_and_brackets_the_fit(noisy):
    n, d, loss, fit = noisy
    first = bootstrap(n, d, loss, 20, seed=1, fit=fit)
    again = bootstrap(n, d, loss, 20, seed=1, fit=fit)
    other = bootstrap(n, d, loss, 20, seed=2, fit=fit)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)
    for name, (low, high) in first.params().items():
        assert low < high, name
    alpha_low, alpha_high = first.params()["alpha"]
    assert alpha_low <= CHINCHILLA["alpha"] + 0.02 and alpha_high >= CHINCHILLA["alpha"] - 0.02
    prediction = predict(fit, *TARGET, first)
    assert prediction.low < prediction.loss < prediction.high
    assert json.dumps(first.to_dict())


def test_gate_passes_inside_the_interval_and_fails_a_miss():
    prediction = Prediction(
        n_params=7e10, n_tokens=1.4e12, loss=2.0, low=1.95, high=2.05, confidence=0.95, effective_tokens=1.4e12
    )
    inside = gate(prediction, 2.04, rel_tolerance=0.0)
    assert inside.passed and "inside" in inside.reasons[0]
    near = gate(prediction, 2.08, rel_tolerance=0.05)  # outside the interval, within 5%
    assert near.passed and "outside" in near.reasons[0] and "within" in near.reasons[1]
    miss = gate(prediction, 2.3, rel_tolerance=0.03)
    assert not miss.passed
    assert miss.rel_error == pytest.approx(0.15)
    assert "2.3000" in miss.reasons[0] and "[1.9500, 2.0500]" in miss.reasons[0]
    assert "+15.00%" in miss.reasons[1] and "3.00%" in miss.reasons[1]
    assert not gate(prediction, float("nan"), rel_tolerance=0.03).passed
    with pytest.raises(ValueError, match="rel_tolerance"):
        gate(prediction, 2.0, rel_tolerance=-0.1)


def test_gate_holds_the_actual_to_the_interval_widened_by_the_validation_losss_own_noise():
    prediction = Prediction(
        n_params=7e10, n_tokens=1.4e12, loss=2.0, low=1.95, high=2.05, confidence=0.95, effective_tokens=1.4e12
    )
    # 0.08 above: outside the prediction's interval, but the validation loss is only known to
    # +-1.96 x 0.045 = +-0.088; in quadrature with the interval's 0.05 that is +-0.101.
    noisy = gate(prediction, 2.08, rel_tolerance=0.0, actual_stderr=0.045)
    assert noisy.passed and not gate(prediction, 2.08, rel_tolerance=0.0).passed
    assert noisy.reasons[0].startswith("actual loss 2.0800 is inside the 95% interval with the validation loss's noise ±0.0882")
    assert "[1.8986, 2.1014]" in noisy.reasons[0]
    assert noisy.reasons[2].startswith("the miss 0.0800 is within the validation loss's own noise (±0.0882")
    # a precise validation loss leaves the interval as it was, and says the miss is real
    precise = gate(prediction, 2.08, rel_tolerance=0.0, actual_stderr=0.001)
    assert not precise.passed and "beyond the validation loss's own noise" in precise.reasons[2]


def test_gate_on_a_fitted_prediction_fails_when_the_target_misses(noisy):
    n, d, loss, fit = noisy
    prediction = predict(fit, *TARGET, bootstrap(n, d, loss, 10, seed=0, fit=fit))
    assert gate(prediction, chinchilla_loss(*TARGET), rel_tolerance=0.01).passed
    assert not gate(prediction, 1.1 * chinchilla_loss(*TARGET), rel_tolerance=0.03).passed


def test_holdout_check_predicts_the_top_rung_of_law_generated_data():
    n, d, loss = ladder_points(5, 6)
    check = holdout_check(n, d, loss)
    assert check.n_params == pytest.approx(1.6e10)
    assert check.n_tokens == pytest.approx(5e11)
    assert check.num_points == 6
    assert abs(check.rel_error) < 1e-3
    assert check.mean_abs_rel_error < 1e-3
    assert check.actual == pytest.approx(chinchilla_loss(1.6e10, 5e11))
    with pytest.raises(ValueError, match="three rungs"):
        holdout_check(*ladder_points(2, 6))


@pytest.mark.parametrize(
    ("n", "d", "loss", "message"),
    [
        ([1e8] * 3 + [2e8] * 3, [1e9, 2e9, 3e9] * 2, [3.0, 2.9, 2.8, 2.7, -1.0, 2.6], "L \\(loss\\)"),
        ([1e8, 2e8] * 3, [1e9, 2e9] * 3, [3.0] * 5, "one length"),
        ([1e8, 2e8, 3e8], [1e9, 2e9, 3e9], [3.0, 2.9, 2.8], "more than 5 points"),
        ([1e8] * 6, [1e9, 2e9, 3e9, 4e9, 5e9, 6e9], [3.0] * 6, "two model sizes"),
    ],
)
def test_bad_points_are_refused_with_a_reason(n, d, loss, message):
    with pytest.raises(ValueError, match=message):
        fit_chinchilla(n, d, loss)


def test_plots_and_summary(tmp_path):
    n, d, loss = ladder_points(5, 6, noise=0.01, seed=3)
    config = ScalingFitConfig(bootstrap_samples=10)
    result = fit_scaling_law.fn(n, d, loss, config)
    json.dumps(result.to_dict())
    prediction = predict(result.fit, *TARGET, result.intervals)
    actual = 1.02 * prediction.loss
    decision = gate(prediction, actual, config.gate_rel_tolerance)
    figures = {
        "loss_vs_compute.png": plot_loss_vs_compute(n, d, loss, result.fit, target=prediction, actual=actual),
        "predicted_vs_actual.png": plot_predicted_vs_actual(n, d, loss, result.fit, target=prediction, actual=actual),
    }
    for name, figure in figures.items():
        path = write_png(figure, tmp_path / "plots" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = summary_markdown(result.fit, result.intervals, result.holdout, prediction, decision, actual)
    assert f"{result.fit.alpha:.4g}" in text
    assert f"{result.holdout.rel_error:+.2%}" in text
    assert "Gate: PASSED" in text and f"{prediction.loss:.4f}" in text


def test_config_defaults_and_unknown_keys():
    config = ScalingFitConfig()
    assert config.delta == 1e-3 and config.grid.size == 108
    assert PAPER_GRID.size == 4500
    with pytest.raises(ValueError, match="bootstrap_sample"):
        build(ScalingFitConfig, {"bootstrap_sample": 5})
    assert build(ScalingFitConfig, {"grid": {"alpha": [0.3]}}).grid.size == 54
    assert isinstance(ScalingFitConfig().to_yaml(), str)


def test_intervals_on_arrays_match_scalars(noisy):
    n, d, loss, fit = noisy
    intervals: Intervals = bootstrap(n, d, loss, 10, seed=0, fit=fit)
    low, high = intervals.loss(np.array([1e9, 7e10]), np.array([2e10, 1.4e12]))
    assert (low[1], high[1]) == pytest.approx(intervals.loss(7e10, 1.4e12))


def test_a_prediction_with_limits_is_widened_or_refused_by_policy():
    limited = Prediction(7e10, 1.4e12, 2.0, 1.95, 2.05, 0.95, 1.4e12, epochs=6.0, limits=("E unidentified, at its bound",))
    assert not gate(limited, 2.08, rel_tolerance=0.03, limits_policy="widen", widen_factor=1.0).passed
    widened = gate(limited, 2.08, rel_tolerance=0.03, limits_policy="widen", widen_factor=2.0)
    assert widened.passed and "[1.9000, 2.1000]" in widened.reasons[0] and "E unidentified" in widened.reasons[2]
    refused = gate(limited, 2.0, rel_tolerance=0.03, limits_policy="refuse")
    assert not refused.passed and "refuses" in refused.reasons[2]
    assert Prediction.from_dict(json.loads(json.dumps(limited.to_dict()))) == limited


def test_effective_data_follows_muennighoff():
    unique = 1e6
    assert effective_tokens(0.5e6, unique, 15.4) == 0.5e6  # no repetition: D itself
    # Muennighoff et al. 2023, eq. 5: 4 epochs (R = 3 repetitions) are worth U (1 + 15.4 (1 - e^(-3/15.4))).
    assert effective_tokens(4e6, unique, 15.4) == pytest.approx(unique * (1 + 15.4 * (1 - np.exp(-3 / 15.4))))
    assert 3.7e6 < effective_tokens(4e6, unique, 15.4) < 4e6  # a few epochs are nearly new data
    assert effective_tokens(1e9, unique, 15.4) == pytest.approx(unique * 16.4)  # never more than U (1 + R*)


# Four starts: a floorless law sends every start's E toward 0 the slow way, and one basin is enough here.
FEW_STARTS = {"a": [0.0, 10.0], "b": [0.0, 10.0], "e": [0.0], "alpha": [0.5], "beta": [0.5]}


def test_e_at_its_bound_is_reported_unidentified(noisy):
    # The example corpus's ladder, floor removed (E = 0): the fit runs E toward 0, and nothing in the points says where it is.
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e4, 8e4, 4), np.geomspace(4e4, 1.6e6, 6)))
    no_floor = 9.66 / n**0.139 + 11.06 / d**0.101
    result = fit_scaling_law.fn(n, d, no_floor, build(ScalingFitConfig, {"bootstrap_samples": 10, "grid": FEW_STARTS}))
    assert "E" in result.unidentified and "at its bound" in result.unidentified["E"]
    prediction = result.predict(1.6e5, 1.6e6)
    assert any(limit.startswith("E unidentified") for limit in prediction.limits)
    text = summary_markdown(result.fit, result.intervals, result.holdout, prediction, unidentified=result.unidentified)
    assert "| E | unidentified (at its bound" in text
    # Chinchilla's law has a floor, and 1,600 points identify every parameter of it.
    n, d, loss, fit = noisy
    config = ScalingFitConfig()
    identify = {k: getattr(config, k) for k in ("e_floor_share", "exponent_range", "max_interval_share")}
    assert unidentified(fit, bootstrap(n, d, loss, 10, seed=0, fit=fit), float(loss.min()), **identify) == {}


def test_repeated_data_is_fitted_as_effective_data_and_marked_beyond_the_valid_epochs():
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e4, 8e4, 4), np.geomspace(4e4, 1.6e6, 6)))
    unique = 4e5  # the top points make 4 epochs
    law = lambda n, d: 1.5 + 9.66 / n**0.3 + 11.06 / d**0.3  # noqa: E731
    config = build(ScalingFitConfig, {"bootstrap_samples": 10, "grid": FEW_STARTS})
    result = fit_scaling_law.fn(n, d, law(n, effective_tokens(d, unique, 15.4)), config, unique)
    assert result.data_constrained and result.max_epochs == pytest.approx(4.0)
    assert result.to_dict()["data"]["form"].startswith("data-constrained")
    within = result.predict(1.6e5, 1.2e6)
    assert within.epochs == pytest.approx(3.0) and within.repeated and within.effective_tokens < 1.2e6
    assert within.loss == pytest.approx(law(1.6e5, effective_tokens(1.2e6, unique, 15.4)), rel=0.01)
    beyond = result.predict(1.6e5, 4e6)
    assert any("10.0 epochs" in limit and "outside the law's validity" in limit for limit in beyond.limits)
    table = fidelity_markdown([FidelityRow("target run", beyond, 2.0), FidelityRow("self-check", result.holdout_prediction)])
    assert "yes, 10.0 epochs" in table and "pending" in table and "outside the law's validity" in table

"""Chinchilla's Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta to (params, tokens, loss) points.

The fit works in log space, as the paper does: with a = log A, b = log B, e = log E,

    log L(N, D) = LSE(a - alpha log N, b - beta log D, e)

and it minimises the *sum* of Huber(delta) of the log-loss residuals with L-BFGS-B from every
point of a grid, keeping the best. Summing matters: averaging the Huber terms shrinks the
gradient by the number of points, and a replication of the paper (Besiroglu et al. 2024,
"Chinchilla Scaling: A replication attempt") traced the published fit's poor agreement with
its own data to an optimizer that stopped early on averaged terms. The small delta makes the
loss nearly L1, so a few bad points (a noisy evaluation) do not drag the fit.

From the fit follow the compute-optimal frontier for C = 6 N D, bootstrap intervals, a
self-check that predicts the largest rung from the others, and the gate that compares the
target run with its prediction.

Two limits are stated rather than hidden. Repeated data: Chinchilla's law counts every token as
new; when a run sees its train split more than once, D is replaced by the effective data of
Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models", arXiv 2305.16264, eq. 5),

    D' = U + U R* (1 - exp(-R / R*)),   R = D / U - 1,

with U the unique tokens and R* the decay constant (their fit: 15.4; they also found up to 4
epochs nearly as good as new data). Identifiability: a parameter the points cannot pin down (E
driven to its bound 0, an exponent at the edge of its range, a bootstrap interval wider than a
set share of its value) is named as unidentified instead of reported as fitted.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from tasks.scaling.config import FitGrid

PARAMS = ("E", "A", "B", "alpha", "beta")
# L-BFGS-B stops on a relative objective change of ftol or a projected gradient of gtol; the
# scipy defaults (2.2e-9, 1e-5) stop this objective early, so both are near machine precision.
LBFGS_OPTIONS = {"maxiter": 10_000, "maxfun": 20_000, "ftol": 1e-15, "gtol": 1e-12}
# The optimizer's linear algebra is 5-dimensional: BLAS threads only add synchronisation, and on a
# busy machine they made a fit ten times slower (1.4 s against 18 s for 108 starts).
SINGLE_THREADED_BLAS = {"limits": 1, "user_api": "blas"}
# Starts whose objective is within this relative margin of the best reached the same minimum.
SAME_MINIMUM_RTOL = 1e-6


@dataclass(frozen=True, eq=False)
class Points:
    """Validated (N, D, L) points in log space, the form the objective uses."""

    log_n: NDArray[np.float64]
    log_d: NDArray[np.float64]
    log_loss: NDArray[np.float64]

    def take(self, index: NDArray[np.intp]) -> Points:
        """The points at ``index`` (repeats allowed: a bootstrap resample)."""
        return Points(self.log_n[index], self.log_d[index], self.log_loss[index])


def as_points(n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike) -> Points:
    """Check the ladder's points and move them to log space.

    Raises ``ValueError`` naming the bad input: arrays must be one-dimensional, of one length,
    finite and positive, with more points than the law's five parameters and at least two
    distinct model sizes and token counts (otherwise alpha or beta is undetermined).
    """
    named = {"N (parameters)": n_params, "D (tokens)": n_tokens, "L (loss)": loss}
    arrays = {}
    for name, values in named.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise ValueError(f"{name} must be a one-dimensional sequence, got shape {array.shape}")
        bad = ~np.isfinite(array) | (array <= 0)
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} value(s) that are not finite and positive "
                f"(first at index {int(np.argmax(bad))}: {array[np.argmax(bad)]!r}); drop those points "
                "(e.g. a diverged rung) before fitting"
            )
        arrays[name] = array
    n, d, observed = arrays.values()
    if not len(n) == len(d) == len(observed):
        raise ValueError(f"N, D and L must have one length, got {len(n)}, {len(d)} and {len(observed)}")
    if len(n) <= len(PARAMS):
        raise ValueError(f"the fit needs more than {len(PARAMS)} points, got {len(n)}: add rungs or evaluations")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(
            f"the fit needs at least two model sizes and two token counts, got {len(np.unique(n))} and "
            f"{len(np.unique(d))}: add rungs or intermediate evaluations"
        )
    return Points(np.log(n), np.log(d), np.log(observed))


def _log_law(x: NDArray[np.float64], log_n: ArrayLike, log_d: ArrayLike) -> NDArray[np.float64]:
    """log L at ``x = (a, b, e, alpha, beta)``, computed stably as a log-sum-exp."""
    a, b, e, alpha, beta = x
    return np.logaddexp(np.logaddexp(a - alpha * np.asarray(log_n), b - beta * np.asarray(log_d)), e)


def law_loss(x: ArrayLike, n_params: ArrayLike, n_tokens: ArrayLike) -> NDArray[np.float64]:
    """The law's loss at (N, D) for coordinates ``x = (a, b, e, alpha, beta)``: a fit's ``x`` or a bootstrap refit's row."""
    return np.exp(_log_law(np.asarray(x, dtype=np.float64), np.log(n_params), np.log(n_tokens)))


def _objective(x: NDArray[np.float64], points: Points, delta: float) -> tuple[float, NDArray[np.float64]]:
    """Sum of Huber(delta) of log-loss residuals, and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * points.log_n, b - beta * points.log_d, np.full_like(points.log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)  # (3, P)
    total = weights.sum(axis=0)
    weights /= total  # softmax: d LSE / d term
    residual = top + np.log(total) - points.log_loss
    size = np.abs(residual)
    huber = np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta)).sum()
    slope = np.clip(residual, -delta, delta)  # d Huber / d residual
    gradient = np.array(
        [
            slope @ weights[0],
            slope @ weights[1],
            slope @ weights[2],
            -(slope * weights[0]) @ points.log_n,
            -(slope * weights[1]) @ points.log_d,
        ]
    )
    return float(huber), gradient


class _Start(NamedTuple):
    x: NDArray[np.float64]
    objective: float
    success: bool
    message: str
    iterations: int


def _minimize(points: Points, x0: ArrayLike, delta: float) -> _Start:
    result = minimize(
        _objective, np.asarray(x0, dtype=np.float64), args=(points, delta), jac=True,
        method="L-BFGS-B", options=LBFGS_OPTIONS,
    )
    return _Start(result.x, float(result.fun), bool(result.success), str(result.message), int(result.nit))


@dataclass(frozen=True)
class ScalingFit:
    """A fitted law L(N, D) = E + A/N^alpha + B/D^beta, with how the fit converged and how well it fits."""

    a: float  # log A
    b: float  # log B
    e: float  # log E
    alpha: float
    beta: float
    delta: float
    objective: float  # sum of Huber terms at the best start
    converged: bool  # the best start's optimizer reported success
    message: str  # the best start's optimizer message
    iterations: int
    starts: int
    starts_at_best: int  # starts that ended within SAME_MINIMUM_RTOL of the best objective
    start_status: dict[str, int]  # optimizer message -> number of starts
    num_points: int
    r2_log_loss: float  # R^2 of the fit on log loss
    rmse_rel: float  # root mean square of predicted/actual - 1

    @property
    def E(self) -> float:
        """The irreducible loss."""
        return float(np.exp(self.e))

    @property
    def A(self) -> float:
        """The coefficient of the model-size term A / N^alpha."""
        return float(np.exp(self.a))

    @property
    def B(self) -> float:
        """The coefficient of the data term B / D^beta."""
        return float(np.exp(self.b))

    @property
    def x(self) -> NDArray[np.float64]:
        """The optimizer's coordinates (a, b, e, alpha, beta)."""
        return np.array([self.a, self.b, self.e, self.alpha, self.beta])

    def loss(self, n_params: ArrayLike, n_tokens: ArrayLike) -> NDArray[np.float64] | float:
        """Predicted loss at (N, D); broadcasts, and returns a float for scalar inputs."""
        predicted = np.exp(_log_law(self.x, np.log(n_params), np.log(n_tokens)))
        return float(predicted) if np.ndim(predicted) == 0 else predicted

    def params(self) -> dict[str, float]:
        """E, A, B, alpha, beta."""
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    def to_dict(self) -> dict[str, Any]:
        """The fit as JSON-ready values, for MLflow and the ladder's summary."""
        return {
            **self.params(),
            "delta": self.delta,
            "objective": self.objective,
            "converged": self.converged,
            "message": self.message,
            "iterations": self.iterations,
            "starts": self.starts,
            "starts_at_best": self.starts_at_best,
            "start_status": dict(self.start_status),
            "num_points": self.num_points,
            "r2_log_loss": self.r2_log_loss,
            "rmse_rel": self.rmse_rel,
        }


def _fit_from(points: Points, starts: list[NDArray[np.float64]], delta: float) -> ScalingFit:
    with threadpool_limits(**SINGLE_THREADED_BLAS):
        results = [_minimize(points, x0, delta) for x0 in starts]
    best = min(results, key=lambda r: r.objective)
    at_best = sum(r.objective <= best.objective * (1 + SAME_MINIMUM_RTOL) for r in results)
    predicted = _log_law(best.x, points.log_n, points.log_d)
    residual = predicted - points.log_loss
    spread = ((points.log_loss - points.log_loss.mean()) ** 2).sum()
    a, b, e, alpha, beta = (float(v) for v in best.x)
    return ScalingFit(
        a=a, b=b, e=e, alpha=alpha, beta=beta, delta=delta,
        objective=best.objective,
        converged=best.success,
        message=best.message,
        iterations=best.iterations,
        starts=len(results),
        starts_at_best=int(at_best),
        start_status=dict(sorted(Counter(r.message for r in results).items())),
        num_points=len(points.log_loss),
        r2_log_loss=float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"),
        rmse_rel=float(np.sqrt(np.mean(np.expm1(residual) ** 2))),
    )


def grid_starts(grid: FitGrid) -> list[NDArray[np.float64]]:
    """Every combination of the grid's values, as (a, b, e, alpha, beta), in a fixed order."""
    return [np.array(x) for x in itertools.product(grid.a, grid.b, grid.e, grid.alpha, grid.beta)]


def fit_chinchilla(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    *,
    delta: float = 1e-3,
    grid: FitGrid | None = None,
) -> ScalingFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to the points, Chinchilla's Approach 3.

    Minimises the sum of Huber(``delta``) of log-loss residuals with L-BFGS-B from every start of
    ``grid`` (default: ``FitGrid()``; ``PAPER_GRID`` is the paper's) and keeps the best. Check
    ``converged`` and ``starts_at_best``: a best start that did not converge, or that only one
    start reached, is a fit to distrust.
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    return _fit_from(as_points(n_params, n_tokens, loss), grid_starts(grid or FitGrid()), delta)


@dataclass(frozen=True, eq=False)  # eq=False: the samples array has no single truth value
class Intervals:
    """Bootstrap percentile intervals of the law's parameters and of any prediction it makes."""

    confidence: float
    samples: NDArray[np.float64]  # (n_boot, 5): each refit's (a, b, e, alpha, beta)
    unconverged: int  # refits whose optimizer did not report success; kept, and counted here

    def _bounds(self, values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        tail = 50 * (1 - self.confidence)
        low, high = np.percentile(values, [tail, 100 - tail], axis=0)
        return low, high

    def params(self) -> dict[str, tuple[float, float]]:
        """(low, high) of E, A, B, alpha and beta."""
        a, b, e, alpha, beta = self.samples.T
        values = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}
        bounds = {}
        for name, column in values.items():
            low, high = self._bounds(column)
            bounds[name] = (float(low), float(high))
        return bounds

    def loss(self, n_params: ArrayLike, n_tokens: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]] | tuple[float, float]:
        """(low, high) of the predicted loss at (N, D) over the refits; floats for scalar inputs."""
        log_n, log_d = np.log(n_params), np.log(n_tokens)
        losses = np.stack([np.exp(_log_law(x, log_n, log_d)) for x in self.samples])
        low, high = self._bounds(losses)
        if np.ndim(low) == 0:
            return float(low), float(high)
        return low, high

    def to_dict(self) -> dict[str, Any]:
        """Coverage, refit counts and parameter intervals as JSON-ready values (not the samples)."""
        return {
            "confidence": self.confidence,
            "samples": len(self.samples),
            "unconverged": self.unconverged,
            "params": {name: list(bounds) for name, bounds in self.params().items()},
        }


def bootstrap(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    n_boot: int,
    seed: int,
    *,
    fit: ScalingFit | None = None,
    delta: float = 1e-3,
    confidence: float = 0.95,
) -> Intervals:
    """Percentile intervals from ``n_boot`` refits on points resampled with replacement.

    Each refit starts from ``fit`` (the full fit, computed with the default grid when not
    given) rather than from the grid: a resample's minimum lies near the full data's, and one
    start per refit keeps the bootstrap fast. Same inputs and seed give the same intervals.
    Points are resampled one by one, though points on one rung's curve are correlated; the
    intervals are therefore optimistic when rungs are few.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2 to give an interval, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    points = as_points(n_params, n_tokens, loss)
    if fit is None:
        fit = _fit_from(points, grid_starts(FitGrid()), delta)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(points.log_loss), size=(n_boot, len(points.log_loss)))
    with threadpool_limits(**SINGLE_THREADED_BLAS):
        refits = [_minimize(points.take(pick), fit.x, delta) for pick in picks]
    return Intervals(
        confidence=confidence,
        samples=np.stack([r.x for r in refits]),
        unconverged=sum(not r.success for r in refits),
    )


def epochs(n_tokens: ArrayLike, unique_tokens: float) -> NDArray[np.float64] | float:
    """Passes over the train split that ``n_tokens`` take, ``D / U``."""
    if not unique_tokens > 0:
        raise ValueError(f"the train split's unique tokens must be positive, got {unique_tokens!r}")
    ratio = np.asarray(n_tokens, dtype=np.float64) / unique_tokens
    return float(ratio) if ratio.ndim == 0 else ratio


def effective_tokens(n_tokens: ArrayLike, unique_tokens: float, repeat_decay: float) -> NDArray[np.float64] | float:
    """Muennighoff et al. 2023, eq. 5: D' = U + U R* (1 - exp(-R/R*)) with R = D/U - 1 repetitions.

    Equal to D up to one epoch; each further epoch is worth less, and D' never exceeds U (1 + R*).
    """
    if not repeat_decay > 0:
        raise ValueError(f"the repetition decay constant R* must be positive, got {repeat_decay!r}")
    d = np.asarray(n_tokens, dtype=np.float64)
    repeats = np.maximum(np.asarray(epochs(d, unique_tokens)) - 1, 0.0)
    effective = np.where(
        repeats > 0, unique_tokens * (1 + repeat_decay * -np.expm1(-repeats / repeat_decay)), d
    )
    return float(effective) if effective.ndim == 0 else effective


def unidentified(
    fit: ScalingFit,
    intervals: Intervals,
    min_loss: float,
    *,
    e_floor_share: float,
    exponent_range: tuple[float, float],
    max_interval_share: float,
) -> dict[str, str]:
    """The parameters the points leave undetermined, each with the reason; empty when all are identified.

    E is at its bound when it is below ``e_floor_share`` of the lowest observed loss ``min_loss``
    (the log-space fit cannot reach 0, so it runs toward it); an exponent at or beyond
    ``exponent_range``'s ends is at the edge the fit can tell apart; any parameter whose bootstrap
    interval is wider than ``max_interval_share`` of its value is free within the points' noise.
    """
    reasons: dict[str, str] = {}
    if fit.E < e_floor_share * min_loss:
        reasons["E"] = (
            f"at its bound: E = {fit.E:.3g} is below {e_floor_share:.0%} of the lowest loss {min_loss:.4g}, "
            "the points do not bend toward a floor"
        )
    low_edge, high_edge = exponent_range
    for name in ("alpha", "beta"):
        value = getattr(fit, name)
        if not low_edge < value < high_edge:
            reasons[name] = f"at the edge of its range: {name} = {value:.3g} is outside ({low_edge:g}, {high_edge:g})"
    for name, (low, high) in intervals.params().items():
        value = fit.params()[name]
        if name not in reasons and high - low > max_interval_share * abs(value):
            reasons[name] = (
                f"its {intervals.confidence:.0%} bootstrap interval [{low:.3g}, {high:.3g}] is wider than "
                f"{max_interval_share:.0%} of its value {value:.3g}"
            )
    return reasons


class ComputeOptimal(NamedTuple):
    """The compute-optimal model size, token count and the loss the law expects there."""

    n_params: NDArray[np.float64] | float
    n_tokens: NDArray[np.float64] | float
    loss: NDArray[np.float64] | float


def frontier_exponents(fit: ScalingFit) -> tuple[float, float]:
    """(a, b) in N_opt ~ C^a and D_opt ~ C^b: beta/(alpha+beta) and alpha/(alpha+beta)."""
    total = fit.alpha + fit.beta
    return fit.beta / total, fit.alpha / total


def compute_optimal(fit: ScalingFit, flops: ArrayLike) -> ComputeOptimal:
    """For a budget of C = 6 N D FLOPs, the (N, D) that minimise the fitted loss, and that loss.

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)) with
    G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al. 2022, eq. 4).
    """
    budget = np.asarray(flops, dtype=np.float64)
    if not (np.isfinite(budget) & (budget > 0)).all():
        raise ValueError(f"the FLOP budget must be finite and positive, got {flops!r}")
    if fit.alpha <= 0 or fit.beta <= 0:
        raise ValueError(
            f"the fit has alpha={fit.alpha:.3g}, beta={fit.beta:.3g}: the frontier needs both positive; "
            "the ladder's points do not show loss falling with size and data"
        )
    exp_n, exp_d = frontier_exponents(fit)
    # G in log space: alpha A and beta B are products of large numbers.
    log_g = (np.log(fit.alpha) + fit.a - np.log(fit.beta) - fit.b) / (fit.alpha + fit.beta)
    n_opt = np.exp(log_g + exp_n * np.log(budget / 6))
    d_opt = np.exp(-log_g + exp_d * np.log(budget / 6))
    loss = fit.loss(n_opt, d_opt)
    if budget.ndim == 0:
        return ComputeOptimal(float(n_opt), float(d_opt), float(loss))
    return ComputeOptimal(n_opt, d_opt, loss)


@dataclass(frozen=True)
class HoldoutCheck:
    """How well a fit without the largest rung predicts that rung."""

    n_params: float  # the held-out rung's N
    n_tokens: float  # its largest D, where ``predicted`` and ``actual`` are taken
    predicted: float
    actual: float
    rel_error: float  # actual / predicted - 1 at the largest D: positive when the rung did worse
    mean_abs_rel_error: float  # mean |actual / predicted - 1| over the held-out rung's points
    num_points: int  # held-out points
    fit: ScalingFit  # the fit without the rung

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for MLflow and the ladder's summary."""
        return {
            "n_params": self.n_params,
            "n_tokens": self.n_tokens,
            "predicted": self.predicted,
            "actual": self.actual,
            "rel_error": self.rel_error,
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "num_points": self.num_points,
            "fit_converged": self.fit.converged,
        }


def holdout_check(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    *,
    delta: float = 1e-3,
    grid: FitGrid | None = None,
) -> HoldoutCheck:
    """Refit without the largest rung (the points with the largest N) and predict its points.

    A ladder whose law cannot predict its own top rung should not be trusted to predict a
    target far beyond it; the error at the rung's final token count is the figure to report.
    """
    n = np.asarray(n_params, dtype=np.float64)
    d = np.asarray(n_tokens, dtype=np.float64)
    observed = np.asarray(loss, dtype=np.float64)
    as_points(n, d, observed)  # validates the inputs as a whole before they are split
    if len(np.unique(n)) < 3:
        raise ValueError(
            f"the self-check needs at least three rungs (distinct N), got {len(np.unique(n))}: "
            "it fits the others and needs two sizes for that"
        )
    top = n == n.max()
    fit = fit_chinchilla(n[~top], d[~top], observed[~top], delta=delta, grid=grid)
    predicted = np.asarray(fit.loss(n[top], d[top]))
    rel = observed[top] / predicted - 1
    last = int(np.argmax(d[top]))
    return HoldoutCheck(
        n_params=float(n.max()),
        n_tokens=float(d[top][last]),
        predicted=float(predicted[last]),
        actual=float(observed[top][last]),
        rel_error=float(rel[last]),
        mean_abs_rel_error=float(np.abs(rel).mean()),
        num_points=int(top.sum()),
        fit=fit,
    )


@dataclass(frozen=True)
class Prediction:
    """The law's loss at (N, D) with its bootstrap interval, and what limits its validity."""

    n_params: float
    n_tokens: float  # tokens the run sees
    loss: float
    low: float
    high: float
    confidence: float
    effective_tokens: float  # D' the law was evaluated at: n_tokens unless the data repeats
    epochs: float | None = None  # passes over the train split, when its size is known
    limits: tuple[str, ...] = ()  # why the prediction is outside the law's validity or rests on unidentified parameters

    @property
    def repeated(self) -> bool:
        """Whether the run sees some of its data more than once."""
        return self.epochs is not None and self.epochs > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for MLflow and the ladder's summary."""
        return {
            "n_params": self.n_params,
            "n_tokens": self.n_tokens,
            "loss": self.loss,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "effective_tokens": self.effective_tokens,
            "epochs": self.epochs,
            "limits": list(self.limits),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Prediction:
        """The prediction :meth:`to_dict` wrote."""
        return cls(**{**raw, "limits": tuple(raw["limits"])})


def predict(
    fit: ScalingFit,
    n_params: float,
    n_tokens: float,
    intervals: Intervals,
    *,
    unique_tokens: float | None = None,
    repeat_decay: float | None = None,
    limits: tuple[str, ...] = (),
) -> Prediction:
    """The fitted loss at one (N, D), with the interval the bootstrap refits give there.

    With the train split's ``unique_tokens`` (and the decay constant ``repeat_decay``) the law is
    evaluated at the effective data D' (``effective_tokens``), as it must be when the fit's
    points were; ``limits`` are carried.
    """
    if not (n_params > 0 and n_tokens > 0):
        raise ValueError(f"N and D of the prediction must be positive, got N={n_params!r}, D={n_tokens!r}")
    if (unique_tokens is None) != (repeat_decay is None):
        raise ValueError("effective data needs both the unique tokens and the repetition decay constant, or neither")
    if unique_tokens is None or repeat_decay is None:
        effective, passes = float(n_tokens), None
    else:
        effective, passes = float(effective_tokens(n_tokens, unique_tokens, repeat_decay)), float(epochs(n_tokens, unique_tokens))
    low, high = intervals.loss(n_params, effective)
    return Prediction(
        n_params=float(n_params),
        n_tokens=float(n_tokens),
        loss=float(fit.loss(n_params, effective)),
        low=float(low),
        high=float(high),
        confidence=intervals.confidence,
        effective_tokens=effective,
        epochs=passes,
        limits=tuple(limits),
    )


@dataclass(frozen=True)
class FidelityRow:
    """One prediction the ladder made, against what the run it predicted measured (``None`` until it has)."""

    name: str
    prediction: Prediction
    actual: float | None = None

    @property
    def rel_error(self) -> float | None:
        """actual / predicted - 1: positive when the run did worse than predicted."""
        return None if self.actual is None else self.actual / self.prediction.loss - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for the fidelity artifact."""
        return {"name": self.name, **self.prediction.to_dict(), "actual": self.actual, "rel_error": self.rel_error}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FidelityRow:
        """The row :meth:`to_dict` wrote."""
        prediction = {k: v for k, v in raw.items() if k not in ("name", "actual", "rel_error")}
        return cls(raw["name"], Prediction.from_dict(prediction), raw["actual"])


@dataclass(frozen=True)
class GateDecision:
    """Whether the target run met its prediction, and why."""

    passed: bool
    reasons: list[str]
    rel_error: float  # actual / predicted - 1: positive when the run did worse than predicted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for MLflow and the ladder's summary."""
        return {"passed": self.passed, "reasons": list(self.reasons), "rel_error": self.rel_error}


def gate(
    prediction: Prediction,
    actual: float,
    rel_tolerance: float,
    *,
    limits_policy: str = "widen",
    widen_factor: float = 2.0,
    actual_stderr: float | None = None,
) -> GateDecision:
    """Pass when the actual loss is inside the prediction's interval or within ``rel_tolerance``.

    The prediction's interval is for the loss itself; the actual is a validation loss measured on
    finitely many sequences, with its own standard error ``actual_stderr``. The two add in
    quadrature: the interval the actual is held to is each side's half-width combined with
    z x stderr at the prediction's confidence, and the reasons say whether the miss is larger
    than the validation loss's own noise.

    A prediction with ``limits`` (outside the law's validity, or resting on unidentified
    parameters) is held to an interval and tolerance ``widen_factor`` times wider under
    ``limits_policy="widen"``, and never passes under ``"refuse"``. A non-finite actual loss (a
    diverged run) fails the gate. Each reason names the numbers so a reader of the summary can
    see by how much the run missed.
    """
    if rel_tolerance < 0:
        raise ValueError(f"rel_tolerance must be non-negative, got {rel_tolerance}")
    if limits_policy not in ("widen", "refuse"):
        raise ValueError(f"limits_policy must be 'widen' or 'refuse', got {limits_policy!r}")
    if not np.isfinite(actual):
        return GateDecision(False, [f"actual loss is {actual}: the target run diverged or was not evaluated"], float("nan"))
    if actual <= 0:
        raise ValueError(f"actual loss must be positive, got {actual}: pass the target run's validation loss")
    rel_error = actual / prediction.loss - 1
    factor = widen_factor if prediction.limits and limits_policy == "widen" else 1.0
    z = NormalDist().inv_cdf((1 + prediction.confidence) / 2)
    noise = 0.0 if actual_stderr is None else z * actual_stderr
    low = prediction.loss - math.hypot(factor * (prediction.loss - prediction.low), noise)
    high = prediction.loss + math.hypot(factor * (prediction.high - prediction.loss), noise)
    tolerance = factor * rel_tolerance
    widened = f" (widened x{factor:g})" if factor != 1 else ""
    with_noise = f" with the validation loss's noise ±{noise:.4f}" if actual_stderr is not None else ""
    interval = f"{prediction.confidence:.0%} interval{widened}{with_noise} [{low:.4f}, {high:.4f}]"
    inside = low <= actual <= high
    close = abs(rel_error) <= tolerance
    reasons = [
        f"actual loss {actual:.4f} is {'inside' if inside else 'outside'} the {interval} "
        f"of the predicted {prediction.loss:.4f}",
        f"relative error {rel_error:+.2%} is {'within' if close else 'beyond'} the tolerance{widened} {tolerance:.2%}",
    ]
    if actual_stderr is not None:
        miss = abs(actual - prediction.loss)
        reasons.append(
            f"the miss {miss:.4f} is {'within' if miss <= noise else 'beyond'} the validation loss's own noise "
            f"(±{noise:.4f}: {z:.2f} x its standard error {actual_stderr:.4f} over the validation sequences)"
        )
    refused = bool(prediction.limits) and limits_policy == "refuse"
    if prediction.limits:
        action = "refuses to pass it" if refused else f"widens the interval and tolerance x{factor:g}"
        reasons.append(f"the prediction has limits ({'; '.join(prediction.limits)}): scaling.fit.limits_policy={limits_policy} {action}")
    return GateDecision((inside or close) and not refused, reasons, float(rel_error))

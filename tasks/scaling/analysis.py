"""The scaling stage's unit of work: fit the ladder's points, bound the fit, check it on the top rung."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from numpy.typing import ArrayLike
from prefect import task

from tasks.scaling.config import ScalingFitConfig
from tasks.scaling.fit import HoldoutCheck, Intervals, ScalingFit, bootstrap, fit_chinchilla, holdout_check


@dataclass(frozen=True)
class LadderFit:
    """The law fitted to every rung, its bootstrap intervals, and the top-rung self-check."""

    fit: ScalingFit
    intervals: Intervals
    holdout: HoldoutCheck

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for MLflow and the ladder's summary."""
        return {"fit": self.fit.to_dict(), "intervals": self.intervals.to_dict(), "holdout": self.holdout.to_dict()}


@task(name="fit-scaling-law")
def fit_scaling_law(
    n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, config: ScalingFitConfig
) -> LadderFit:
    """Fit L(N, D) to the ladder's (N, D, L) points, with intervals and the held-out top rung."""
    fit = fit_chinchilla(n_params, n_tokens, loss, delta=config.delta, grid=config.grid)
    intervals = bootstrap(
        n_params, n_tokens, loss, config.bootstrap_samples, config.seed,
        fit=fit, delta=config.delta, confidence=config.confidence,
    )
    holdout = holdout_check(n_params, n_tokens, loss, delta=config.delta, grid=config.grid)
    return LadderFit(fit=fit, intervals=intervals, holdout=holdout)

"""The scaling stage's unit of work: fit the ladder's points, bound the fit, check it on the top rung."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from prefect import task

from tasks.scaling.config import ScalingFitConfig
from tasks.scaling.fit import (
    HoldoutCheck,
    Intervals,
    Prediction,
    ScalingFit,
    bootstrap,
    effective_tokens,
    epochs,
    fit_chinchilla,
    holdout_check,
    predict,
    unidentified,
)


@dataclass(frozen=True)
class LadderFit:
    """The law fitted to every rung, its bootstrap intervals, the top-rung self-check, and its limits.

    With the train split's ``unique_tokens`` known and any point past one epoch, the law is
    fitted on Muennighoff's effective data D' (the data-constrained form) instead of D.
    """

    fit: ScalingFit
    intervals: Intervals
    holdout: HoldoutCheck
    holdout_prediction: Prediction  # the top rung's last point from the fit without it, with that fit's interval
    holdout_intervals: Intervals  # the bootstrap of the fit without the top rung
    unidentified: dict[str, str]  # parameter -> why the points do not determine it
    unique_tokens: float | None  # tokens of one pass over the train split, in the unit D counts
    max_epochs: float | None  # most passes over the train split any point made
    config: ScalingFitConfig

    @property
    def data_constrained(self) -> bool:
        """Whether some point repeated data, so the law was fitted on effective data D'."""
        return self.max_epochs is not None and self.max_epochs > 1

    @property
    def form(self) -> str:
        """The law's form as fitted: Chinchilla's, or data-constrained on effective data."""
        if self.data_constrained:
            return f"data-constrained (Muennighoff et al. 2023, R_D* = {self.config.repeat_decay:g})"
        return "chinchilla"

    def predict(self, n_params: float, n_tokens: float) -> Prediction:
        """The law's loss for a run of N parameters on D tokens, on effective data when it repeats, with its limits."""
        return predict(
            self.fit, n_params, n_tokens, self.intervals, **_data(self.unique_tokens, self.config),
            limits=limits(self.unidentified, n_tokens, self.unique_tokens, self.max_epochs, self.config.max_epochs),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for MLflow and the ladder's summary."""
        return {
            "fit": self.fit.to_dict(),
            "intervals": self.intervals.to_dict(),
            "holdout": self.holdout.to_dict(),
            "holdout_prediction": self.holdout_prediction.to_dict(),
            "unidentified": dict(self.unidentified),
            "data": {
                "unique_tokens": self.unique_tokens,
                "max_epochs": self.max_epochs,
                "form": self.form,
            },
        }


def _data(unique_tokens: float | None, config: ScalingFitConfig) -> dict[str, float]:
    """``predict``'s effective-data arguments: none when the train split's size is unknown."""
    return {} if unique_tokens is None else {"unique_tokens": unique_tokens, "repeat_decay": config.repeat_decay}


def limits(
    unidentified_params: dict[str, str],
    n_tokens: float,
    unique_tokens: float | None,
    points_epochs: float | None,
    max_epochs: float,
) -> tuple[str, ...]:
    """Why a prediction for a run of ``n_tokens`` rests on unidentified parameters or lies outside the law's validity.

    Outside validity: the run, or the points the law was fitted to, pass over the train split
    more than ``max_epochs`` times.
    """
    reasons = [f"{name} unidentified, {why}" for name, why in unidentified_params.items()]
    if unique_tokens is not None:
        run_epochs = epochs(n_tokens, unique_tokens)
        if run_epochs > max_epochs:
            reasons.append(
                f"outside the law's validity: the run makes {run_epochs:.1f} epochs over the train split's "
                f"{unique_tokens:.3g} tokens, beyond the {max_epochs:g} the data-constrained law is trusted for"
            )
        if points_epochs is not None and points_epochs > max_epochs:
            reasons.append(f"outside the law's validity: the rungs' points reach {points_epochs:.1f} epochs, beyond {max_epochs:g}")
    return tuple(reasons)


@task(name="fit-scaling-law")
def fit_scaling_law(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    config: ScalingFitConfig,
    unique_tokens: float | None = None,
) -> LadderFit:
    """Fit L(N, D) to the ladder's (N, D, L) points, with intervals, the held-out top rung and its limits.

    ``unique_tokens``: one pass over the train split in tokens (as D counts them); points past
    it are fitted at their effective data D'.
    """
    n = np.asarray(n_params, dtype=np.float64)
    seen = np.asarray(n_tokens, dtype=np.float64)
    observed = np.asarray(loss, dtype=np.float64)
    d = seen if unique_tokens is None else np.asarray(effective_tokens(seen, unique_tokens, config.repeat_decay))
    identify = {
        "e_floor_share": config.e_floor_share,
        "exponent_range": config.exponent_range,
        "max_interval_share": config.max_interval_share,
    }
    fit = fit_chinchilla(n, d, observed, delta=config.delta, grid=config.grid)
    intervals = bootstrap(
        n, d, observed, config.bootstrap_samples, config.seed, fit=fit, delta=config.delta, confidence=config.confidence
    )
    holdout = holdout_check(n, d, observed, delta=config.delta, grid=config.grid)
    rest = n < n.max()
    holdout_intervals = bootstrap(
        n[rest], d[rest], observed[rest], config.bootstrap_samples, config.seed,
        fit=holdout.fit, delta=config.delta, confidence=config.confidence,
    )
    points_epochs = None if unique_tokens is None else float(epochs(seen.max(), unique_tokens))
    top_tokens = float(seen[~rest].max())
    holdout_unidentified = unidentified(holdout.fit, holdout_intervals, float(observed[rest].min()), **identify)
    fit_unidentified = unidentified(fit, intervals, float(observed.min()), **identify)
    return LadderFit(
        fit=fit,
        intervals=intervals,
        holdout=holdout,
        holdout_intervals=holdout_intervals,
        holdout_prediction=predict(
            holdout.fit, holdout.n_params, top_tokens, holdout_intervals, **_data(unique_tokens, config),
            limits=limits(holdout_unidentified, top_tokens, unique_tokens, points_epochs, config.max_epochs),
        ),
        unidentified=fit_unidentified,
        unique_tokens=unique_tokens,
        max_epochs=points_epochs,
        config=config,
    )

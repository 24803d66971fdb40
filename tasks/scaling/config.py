"""Config of the scaling-law fit, its bootstrap intervals and the target run's gate."""

from __future__ import annotations

from pydantic import Field, field_validator

from ladder.config import Section


class FitGrid(Section):
    """Starting points of the L-BFGS fit: every combination of these values is one start.

    The fit keeps the best start, so the grid only has to put one start in the basin of the
    global minimum. ``PAPER_GRID`` is Chinchilla's 4,500 starts; the default is a coarse subset
    of 108 that, on 64 and 400 points drawn from the paper's law with 1% noise, reached the
    paper grid's minimum (same objective to 1e-14) in about 1 s instead of 35-57 s.
    """

    a: tuple[float, ...] = Field(default=(0.0, 10.0, 20.0), description="Starts for a = log A.")
    b: tuple[float, ...] = Field(default=(0.0, 10.0, 20.0), description="Starts for b = log B.")
    e: tuple[float, ...] = Field(default=(-1.0, 0.0, 1.0), description="Starts for e = log E.")
    alpha: tuple[float, ...] = Field(default=(0.5, 1.5), description="Starts for the parameter exponent alpha.")
    beta: tuple[float, ...] = Field(default=(0.5, 1.5), description="Starts for the data exponent beta.")

    @field_validator("a", "b", "e", "alpha", "beta")
    @classmethod
    def _not_empty(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values:
            raise ValueError("needs at least one starting value")
        return values

    @property
    def size(self) -> int:
        """Number of starting points."""
        return len(self.a) * len(self.b) * len(self.e) * len(self.alpha) * len(self.beta)


# Hoffmann et al. 2022, appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}.
PAPER_GRID = FitGrid(
    a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    e=(-1.0, -0.5, 0.0, 0.5, 1.0),
    alpha=(0.0, 0.5, 1.0, 1.5, 2.0),
    beta=(0.0, 0.5, 1.0, 1.5, 2.0),
)


class ScalingFitConfig(Section):
    """How the ladder's points are fitted, how sure the fit is, and how strict the gate is."""

    delta: float = Field(
        default=1e-3, gt=0, description="Huber delta on log-loss residuals (Chinchilla: 1e-3)."
    )
    grid: FitGrid = Field(default_factory=FitGrid, description="Starting points of the L-BFGS fit.")
    bootstrap_samples: int = Field(
        default=50, ge=10, description="Bootstrap refits behind the confidence intervals."
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="Coverage of the percentile intervals (0.95: 2.5th to 97.5th)."
    )
    seed: int = Field(default=0, description="Seed of the bootstrap resampling.")
    gate_rel_tolerance: float = Field(
        default=0.03,
        ge=0,
        description="The target run passes the gate if its loss is within this relative error of the "
        "prediction, even when outside the interval.",
    )

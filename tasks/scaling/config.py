"""Config of the scaling-law fit, its bootstrap intervals and the target run's gate."""

from __future__ import annotations

from typing import Literal

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
    repeat_decay: float = Field(
        default=15.4,
        gt=0,
        description="R_D* of the data-constrained law (Muennighoff et al. 2023, fitted 15.4): when a rung or the "
        "target sees the train split more than once, tokens are counted as effective data D' that decays with "
        "repetition. A ladder of a few tiny rungs cannot fit this constant itself, so the paper's is used.",
    )
    max_epochs: float = Field(
        default=4.0,
        ge=1,
        description="Epochs over the train split beyond which a prediction is marked outside the law's validity: "
        "Muennighoff et al. found up to 4 epochs nearly as good as new data; past that the decay constant, "
        "taken from their models, decides the prediction, and nothing in this ladder checks it.",
    )
    e_floor_share: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="E below this share of the lowest observed loss is at its bound (0) and reported unidentified: "
        "points that never bend toward a floor let the fit drive E to zero and the exponents absorb it.",
    )
    exponent_range: tuple[float, float] = Field(
        default=(0.02, 2.0),
        description="alpha or beta at or beyond either end is reported unidentified: near 0 its term is a constant "
        "the fit cannot tell from E; above 2 (the end of Chinchilla's start grid) no published ladder has gone.",
    )
    max_interval_share: float = Field(
        default=1.0,
        gt=0,
        description="A parameter whose bootstrap interval is wider than this share of its value is reported "
        "unidentified: the points leave it free, whatever value the best start happened to reach.",
    )
    limits_policy: Literal["widen", "refuse"] = Field(
        default="widen",
        description="What the target gate does with a prediction outside the law's validity or resting on "
        "unidentified parameters: widen its interval and tolerance by widen_factor, or refuse to pass the run.",
    )
    widen_factor: float = Field(
        default=2.0, ge=1, description="limits_policy=widen: factor on the interval's half-widths and on the tolerance."
    )

    @field_validator("exponent_range")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= bounds[0] < bounds[1]:
            raise ValueError(f"exponent_range needs 0 <= low < high, got {bounds}")
        return bounds


class TaskScoresConfig(Section):
    """How the ladder predicts the target's eval-task scores (AI2's two steps) and how the release gate reads a miss.

    Bhagia et al. 2024 ("Establishing Task Scaling Laws via Compute-Efficient Model Ladders",
    arXiv 2412.04403): step 1 takes (N, D) to the task loss (bits per byte of each item's correct
    answer), step 2 the task loss to the score with a sigmoid. Each rung's final checkpoint is
    scored on the eval suite the evals stage builds, so predictions and the target's scores come
    from the same items and the same lm-eval.
    """

    enabled: bool = Field(
        True, description="Score the rungs on the eval suite and predict every task's score (false: loss only)."
    )
    metrics: tuple[str, ...] = Field(
        ("acc_norm", "exact_match", "bits_per_byte"),
        description="The score predicted for each task, the first of these its metrics has: accuracy normalised by "
        "length for the cloze tasks, exact match for generation, bits per byte for perplexity (its own task loss).",
    )
    rung_items: int | None = Field(
        32, ge=8, description="Items per cloze or generation task the rungs are scored on (the suite's first; null: "
        "all). The bootstrap over them puts their noise into the interval. Tiny profile, example corpus, 2 shared "
        "cores: scoring the four rungs at 32 items and 8 documents took 6-20 s of wall time (about 19 CPU seconds); "
        "at 16 and 4, 3 s once the lm-eval import was paid.",
    )
    rung_documents: int | None = Field(
        8, ge=2, description="Held-out documents per perplexity task the rungs are scored on (the suite's first; null: "
        "all): each is scored whole in rolling windows, and with every document (24 a source) perplexity took three "
        "quarters of the rungs' scoring time on the example corpus.",
    )
    bootstrap_samples: int = Field(
        200, ge=20, description="Joint resamples of the rungs' items and the loss law's bootstrap refits behind each interval."
    )
    confidence: float = Field(0.9, gt=0, lt=1, description="Coverage of the predicted scores' percentile intervals.")
    gate: Literal["advisory", "required"] = Field(
        "advisory",
        description="What a target score outside its prediction's interval does at the release gate: advisory "
        "reports it as a reason, required also fails the gate. Advisory by default: a few tiny rungs near chance "
        "rarely pin the sigmoid down.",
    )
    seed: int = Field(0, description="Seed of the bootstrap resampling.")

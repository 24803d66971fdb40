"""Eval-task scores predicted for the target run from the ladder's rungs: AI2's two steps.

Bhagia et al. 2024 ("Establishing Task Scaling Laws via Compute-Efficient Model Ladders",
arXiv 2412.04403) predict a task's score in two steps: (N, D) -> task loss, the bits per byte
of each item's correct answer, then task loss -> score with a sigmoid,

    score(L) = floor + (1 - floor) / (1 + exp(k (L - L0))).

A few tiny rungs give one point each (their final checkpoints), too few for either step's free
parameters, so each step keeps only what the points can identify:

- step 1 shares the loss law's shape: L_task = E_task + s R(N, D), with R = A/N^alpha + B/D^beta
  the fitted law's reducible loss (at effective data when the data repeats); two parameters, a
  straight line through the rungs;
- step 2 fixes the sigmoid's floor at chance (one over the options; 0 for generation) and its
  ceiling at 1, leaving k and L0, found by a grid search: global, so a flat stretch near chance
  cannot trap it, and vectorised over the bootstrap's resamples. Bits per byte is its own task
  loss: step 2 is then the identity.

A generation task has no likelihoods of its own: its task loss is its answers' bits per byte in
the multiple-choice task over the same items (``ladder_last_word_gen`` from ``ladder_last_word``).

The interval resamples the rungs' items (the same draw for every rung: they scored the same
items) jointly with the loss law's bootstrap refits. The self-check does the same without the
top rung, under the law fitted (and bootstrapped) without it, and predicts the top rung's score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tasks.evals.config import RunConfig
from tasks.evals.runner import MetricTable, load_lm
from tasks.evals.suite import PPL, Suite
from tasks.scaling.analysis import LadderFit
from tasks.scaling.config import TaskScoresConfig
from tasks.scaling.fit import effective_tokens, law_loss

# lm-eval logs a rolling-loglikelihood document's (loglikelihood, bytes) under this metric.
BPB = "bits_per_byte"
# A generation task's name is its multiple-choice sibling's with this inserted (tasks.evals.suite.FAMILIES).
GENERATION_SUFFIX = "_gen"
# A score at the sigmoid's floor (or 1) is reached only in the limit: an interval this close to a
# measured 0 or 1 holds it.
SCORE_ATOL = 1e-9
# The sigmoid's search grid: L0 reaches this many spans of the rungs' task losses past either
# end, and k x span runs over K_SPAN (a span-relative steepness, so the grid fits any loss unit).
L0_REACH, L0_STEPS = 2.0, 121
K_SPAN, K_STEPS = (0.05, 50.0), 41


@dataclass(frozen=True, eq=False)
class TaskItems:
    """One metric of the suite item by item for every rung: rows are rungs, smallest first; columns are items."""

    task: str
    metric: str
    bits: NDArray[np.float64]  # (rungs, items): the correct answer's negative log-likelihood, in bits
    nbytes: NDArray[np.float64]  # (rungs, items): its length in UTF-8 bytes
    scores: NDArray[np.float64] | None  # (rungs, items): the metric per item; None when the metric is the task loss
    floor: float  # the score of chance

    @property
    def name(self) -> str:
        return f"{self.task}/{self.metric}"


def within(value: float, low: float, high: float) -> bool:
    """Whether ``value`` lies in [low, high], up to ``SCORE_ATOL``."""
    return low - SCORE_ATOL <= value <= high + SCORE_ATOL


def _multiple_choice(sample: dict[str, Any]) -> bool:
    responses = sample["filtered_resps"]
    return bool(responses) and isinstance(responses[0], tuple | list)


def _answer_bits(sample: dict[str, Any]) -> tuple[float, float]:
    """The gold option's (bits, bytes); the option's own bytes, as lm-eval's acc_norm counts its length."""
    gold = int(sample["target"])
    loglikelihood = float(sample["filtered_resps"][gold][0])
    return -loglikelihood / math.log(2), float(len(sample["doc"]["choices"][gold].encode()))


def _one_rung(samples: Mapping[str, list[dict[str, Any]]], task: str, metric: str) -> tuple[list[str], list[tuple[float, float, float]], float]:
    """Item ids, (bits, bytes, score) per item and the chance floor of one metric on one rung."""
    if metric == BPB:
        names = [t for t in sorted(samples) if t.startswith(f"{PPL}_")] if task == PPL else [task]
        rows = [s for name in names for s in samples[name]]
        pairs = [s[BPB] for s in rows]
        return [s["doc"]["id"] for s in rows], [(-ll / math.log(2), n, math.nan) for ll, n in pairs], 0.0
    logged = samples[task]
    if _multiple_choice(logged[0]):
        floor = float(np.mean([1 / len(s["doc"]["choices"]) for s in logged]))
        return [s["doc"]["id"] for s in logged], [(*_answer_bits(s), float(s[metric])) for s in logged], floor
    sibling = task.replace(GENERATION_SUFFIX, "", 1)
    if sibling == task or sibling not in samples or not _multiple_choice(samples[sibling][0]):
        raise LookupError(f"a generation task with no multiple-choice task over its items ({sibling}) has no task loss")
    answers = {s["doc"]["id"]: _answer_bits(s) for s in samples[sibling]}
    missing = [s["doc"]["id"] for s in logged if s["doc"]["id"] not in answers]
    if missing:
        raise LookupError(f"{len(missing)} of its items are not scored by {sibling} (first {missing[0]!r})")
    return [s["doc"]["id"] for s in logged], [(*answers[s["doc"]["id"]], float(s[metric])) for s in logged], 0.0


def task_items(
    rung_samples: Sequence[Mapping[str, list[dict[str, Any]]]], suite: Suite, metrics: Sequence[str]
) -> tuple[list[TaskItems], dict[str, str]]:
    """Each task's predicted metric (the first of ``metrics`` it has) item by item over the rungs, from lm-eval's samples.

    Returns the items and, for a task that cannot be predicted, the reason (reported, not dropped silently).
    """
    offered: dict[str, set[str]] = {}
    for full in suite.metrics:
        task, _, metric = full.partition("/")
        offered.setdefault(task, set()).add(metric)
    chosen = {task: next(m for m in metrics if m in has) for task, has in offered.items() if has & set(metrics)}
    found, unpredicted = [], {}
    for task, metric in sorted(chosen.items()):
        try:
            per_rung = [_one_rung(samples, task, metric) for samples in rung_samples]
        except LookupError as why:
            unpredicted[f"{task}/{metric}"] = str(why)
            continue
        ids = per_rung[0][0]
        if any(other != ids for other, _, _ in per_rung):
            raise ValueError(f"{task}: the rungs scored different items; score every rung with one suite and one item limit")
        values = np.array([rows for _, rows, _ in per_rung], dtype=np.float64)  # (rungs, items, 3)
        scores = None if metric == BPB else values[..., 2]
        found.append(TaskItems(task, metric, values[..., 0], values[..., 1], scores, per_rung[0][2]))
    return found, unpredicted


def task_loss_and_score(items: TaskItems, index: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Task loss (pooled bits per byte) and score of every rung on the items at ``index`` ((draws, items)): each (draws, rungs)."""
    bits, nbytes = items.bits[:, index], items.nbytes[:, index]  # (rungs, draws, items)
    loss = (bits.sum(-1) / nbytes.sum(-1)).T
    score = loss if items.scores is None else items.scores[:, index].mean(-1).T
    return loss, score


def fit_line(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares (intercept, slope) of y on x along the last axis, for every leading index at once."""
    dx = x - x.mean(-1, keepdims=True)
    slope = (dx * (y - y.mean(-1, keepdims=True))).sum(-1) / (dx**2).sum(-1)
    return y.mean(-1) - slope * x.mean(-1), slope


def sigmoid(loss: NDArray[np.float64] | float, k: Any, midpoint: Any, floor: float) -> NDArray[np.float64]:
    """AI2's step 2: chance ``floor`` at high loss, 1 at low loss, halfway at ``midpoint``, steepness ``k``."""
    return floor + (1 - floor) / (1 + np.exp(np.clip(k * (np.asarray(loss) - midpoint), -500, 500)))


@dataclass(frozen=True)
class SigmoidGrid:
    """The (k, L0) values the step-2 search tries, set from the rungs' task losses."""

    k: NDArray[np.float64]
    midpoint: NDArray[np.float64]

    @classmethod
    def around(cls, loss: NDArray[np.float64]) -> SigmoidGrid:
        low, high = float(loss.min()), float(loss.max())
        span = max(high - low, 1e-3 * max(abs(high), 1.0))
        return cls(np.geomspace(*K_SPAN, K_STEPS) / span,
                   np.linspace(low - L0_REACH * span, high + L0_REACH * span, L0_STEPS))


def fit_sigmoid(
    loss: NDArray[np.float64], score: NDArray[np.float64], floor: float, grid: SigmoidGrid
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(k, L0) minimising the squared error of ``sigmoid`` over the grid, for each row of (draws, rungs) at once."""
    curve = sigmoid(loss[:, None, None, :], grid.k[None, :, None, None], grid.midpoint[None, None, :, None], floor)
    error = ((curve - score[:, None, None, :]) ** 2).sum(-1).reshape(len(loss), -1)  # (draws, k x L0)
    best_k, best_mid = np.unravel_index(error.argmin(-1), (len(grid.k), len(grid.midpoint)))
    return grid.k[best_k], grid.midpoint[best_mid]


@dataclass(frozen=True)
class TwoStep:
    """One set of predictions of the two steps: for each draw, the fitted parameters and the predicted task loss and score."""

    intercept: NDArray[np.float64]
    slope: NDArray[np.float64]
    k: NDArray[np.float64] | None
    midpoint: NDArray[np.float64] | None
    task_loss: NDArray[np.float64]
    score: NDArray[np.float64]


def two_step(
    reducible: NDArray[np.float64], reducible_at: NDArray[np.float64], loss: NDArray[np.float64],
    score: NDArray[np.float64], items: TaskItems, grid: SigmoidGrid,
) -> TwoStep:
    """Fit both steps to the rungs and predict at the law's reducible loss ``reducible_at``; everything per draw.

    ``reducible``, ``loss``, ``score``: (draws, rungs); ``reducible_at``: (draws,).
    """
    intercept, slope = fit_line(reducible, loss)
    predicted_loss = intercept + slope * reducible_at
    if items.scores is None:
        return TwoStep(intercept, slope, None, None, predicted_loss, predicted_loss)
    k, midpoint = fit_sigmoid(loss, score, items.floor, grid)
    return TwoStep(intercept, slope, k, midpoint, predicted_loss, sigmoid(predicted_loss, k, midpoint, items.floor))


@dataclass(frozen=True)
class SelfCheck:
    """The top rung's score predicted from the other rungs, with its interval, against what it scored."""

    predicted: float
    low: float
    high: float
    actual: float

    @property
    def error(self) -> float:
        """actual - predicted, in the metric's units."""
        return self.actual - self.predicted

    @property
    def inside(self) -> bool:
        return within(self.actual, self.low, self.high)


@dataclass(frozen=True)
class TaskPrediction:
    """The target's predicted score on one eval task, with its interval, the fit behind it and its self-check."""

    task: str
    metric: str  # lm-eval's metric name: acc_norm, exact_match, bits_per_byte
    predicted: float
    low: float
    high: float
    confidence: float
    higher_is_better: bool
    task_loss: float  # the target's predicted task loss (bits per byte of the correct answers)
    params: dict[str, float]  # step 1's intercept and slope; step 2's k, midpoint and floor (absent for bits per byte)
    rung_items: int  # items each rung was scored on
    self_check: SelfCheck
    limits: tuple[str, ...] = ()  # what the points leave undetermined, or the loss law's own limits

    @property
    def name(self) -> str:
        """``<task>/<metric>``, as the eval table names it."""
        return f"{self.task}/{self.metric}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for the scaling artifact and MLflow."""
        return {
            "task": self.task, "metric": self.metric, "predicted": self.predicted, "low": self.low, "high": self.high,
            "confidence": self.confidence, "higher_is_better": self.higher_is_better, "task_loss": self.task_loss,
            "params": dict(self.params), "rung_items": self.rung_items,
            "self_check": {**self.self_check.__dict__, "inside": self.self_check.inside}, "limits": list(self.limits),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskPrediction:
        """The prediction :meth:`to_dict` wrote."""
        check = {k: v for k, v in raw["self_check"].items() if k != "inside"}
        return cls(**{**raw, "self_check": SelfCheck(**check), "limits": tuple(raw["limits"])})


def _reducible(x: NDArray[np.float64], n_params: NDArray[np.float64], n_tokens: NDArray[np.float64]) -> NDArray[np.float64]:
    """A + B terms of the law at coordinates ``x`` (rows: draws) for each (N, D'): (draws, points)."""
    x = np.atleast_2d(x)
    return np.stack([law_loss(row, n_params, n_tokens) - np.exp(row[2]) for row in x])


def _effective(ladder: LadderFit, n_tokens: NDArray[np.float64]) -> NDArray[np.float64]:
    """The data the law was fitted in: effective tokens D' when the train split's size is known, else D."""
    if ladder.unique_tokens is None:
        return n_tokens
    return np.asarray(effective_tokens(n_tokens, ladder.unique_tokens, ladder.config.repeat_decay))


def _limits(items: TaskItems, fit: TwoStep, grid: SigmoidGrid, rung_loss: NDArray[np.float64]) -> list[str]:
    """Why the point fit rests on parameters the rungs leave undetermined."""
    reasons = []
    if fit.slope[0] <= 0:
        reasons.append(f"the task loss does not fall with the law's loss over the rungs (step-1 slope {fit.slope[0]:.3g})")
    if fit.k is None or fit.midpoint is None:
        return reasons
    if fit.k[0] in (grid.k[0], grid.k[-1]):
        reasons.append(f"the sigmoid's steepness k = {fit.k[0]:.3g} is at the end of its search range")
    if fit.midpoint[0] in (grid.midpoint[0], grid.midpoint[-1]):
        reasons.append(f"the sigmoid's midpoint L0 = {fit.midpoint[0]:.3g} is at the end of its search range")
    elif not rung_loss.min() <= fit.midpoint[0] <= rung_loss.max():
        reasons.append(
            f"every rung lies on one side of the sigmoid's midpoint (L0 = {fit.midpoint[0]:.3g}, rungs' task loss "
            f"{rung_loss.min():.3g} to {rung_loss.max():.3g}): its bend is extrapolated"
        )
    return reasons


def _bounds(values: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    tail = 50 * (1 - confidence)
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def predict_task_scores(
    items: Sequence[TaskItems],
    ladder: LadderFit,
    rungs: tuple[Sequence[float], Sequence[float]],
    target: tuple[float, float],
    cfg: TaskScoresConfig,
    higher_is_better: Mapping[str, bool],
    law_limits: Sequence[str] = (),
) -> list[TaskPrediction]:
    """The target's score on every task in ``items``, from the rungs' scores and the ladder's loss law.

    ``rungs``: (N, D) of each rung's scored checkpoint, smallest first, as ``items`` rows are;
    ``target``: the target run's (N, D); ``law_limits``: the loss prediction's limits, carried.
    """
    n = np.asarray(rungs[0], dtype=np.float64)
    if len(n) < 3 or np.any(np.diff(n) <= 0):
        raise ValueError(f"task scores need at least three rungs of growing size, smallest first; got N = {list(n)}")
    d = np.asarray(rungs[1], dtype=np.float64)
    d_eff, target_d = _effective(ladder, d), _effective(ladder, np.array([target[1]]))
    target_n = np.array([target[0]])
    rng = np.random.default_rng(cfg.seed)
    draws = cfg.bootstrap_samples
    # Draw i of the items goes with the law's bootstrap refit i (cycled when the law has fewer refits).
    refit = np.arange(draws)
    # Each law at the rungs and the target, one column per point, the target last; the fit without the
    # top rung at the rungs, the top rung last.
    at = (np.append(n, target_n), np.append(d_eff, target_d))
    point_reducible = _reducible(ladder.fit.x, *at)
    reducible = _reducible(ladder.intervals.samples[refit % len(ladder.intervals.samples)], *at)
    holdout = _reducible(ladder.holdout.fit.x, n, d_eff)
    holdout_spread = _reducible(ladder.holdout_intervals.samples[refit % len(ladder.holdout_intervals.samples)], n, d_eff)
    predictions = []
    for task in items:
        whole = np.arange(task.bits.shape[1])[None, :]
        resample = rng.integers(0, task.bits.shape[1], size=(draws, task.bits.shape[1]))
        loss, score = task_loss_and_score(task, whole)
        boot_loss, boot_score = task_loss_and_score(task, resample)
        grid = SigmoidGrid.around(loss)
        point = two_step(point_reducible[:, :-1], point_reducible[:, -1], loss, score, task, grid)
        spread = two_step(reducible[:, :-1], reducible[:, -1], boot_loss, boot_score, task, grid)
        rest = two_step(holdout[:, :-1], holdout[:, -1], loss[:, :-1], score[:, :-1], task, grid)
        rest_spread = two_step(holdout_spread[:, :-1], holdout_spread[:, -1], boot_loss[:, :-1], boot_score[:, :-1], task, grid)
        params = {"intercept": float(point.intercept[0]), "slope": float(point.slope[0])}
        if point.k is not None and point.midpoint is not None:
            params.update({"k": float(point.k[0]), "midpoint": float(point.midpoint[0]), "floor": task.floor})
        low, high = _bounds(spread.score, cfg.confidence)
        predictions.append(TaskPrediction(
            task=task.task, metric=task.metric, predicted=float(point.score[0]), low=low, high=high,
            confidence=cfg.confidence, higher_is_better=higher_is_better[task.name], task_loss=float(point.task_loss[0]),
            params=params, rung_items=task.bits.shape[1],
            self_check=SelfCheck(float(rest.score[0]), *_bounds(rest_spread.score, cfg.confidence), float(score[0, -1])),
            limits=tuple(_limits(task, point, grid, loss[0]) + [f"loss law: {limit}" for limit in law_limits]),
        ))
    return predictions


@dataclass(frozen=True)
class TaskComparison:
    """A task's predicted score against the target's measured one (``None`` when the eval table lacks it).

    ``low`` and ``high`` are the prediction's interval widened by the measurement's own standard
    error (in quadrature, at the prediction's confidence): the target is scored on finitely many items too.
    """

    prediction: TaskPrediction
    actual: float | None
    stderr: float | None
    low: float
    high: float

    @property
    def error(self) -> float | None:
        """actual - predicted, in the metric's units."""
        return None if self.actual is None else self.actual - self.prediction.predicted

    @property
    def inside(self) -> bool | None:
        return None if self.actual is None else within(self.actual, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for the release gate's record and the run summary."""
        return {"metric": self.prediction.name, "predicted": self.prediction.predicted, "low": self.low, "high": self.high,
                "actual": self.actual, "stderr": self.stderr, "error": self.error, "inside": self.inside,
                "limits": list(self.prediction.limits)}


def compare_task_scores(predictions: Sequence[TaskPrediction], measured: MetricTable) -> list[TaskComparison]:
    """Each prediction against the target's eval table (``tasks.evals.runner.MetricTable``; from the rows
    ``evals_flow`` returns: ``table_from_rows(result["metrics"])``)."""
    rows = []
    for prediction in predictions:
        metric = measured.get(prediction.name)
        p = prediction.predicted
        se = 0.0 if metric is None or metric.stderr is None else metric.stderr
        z = NormalDist().inv_cdf((1 + prediction.confidence) / 2)
        low = p - math.hypot(p - prediction.low, z * se)
        high = p + math.hypot(prediction.high - p, z * se)
        rows.append(TaskComparison(prediction, None if metric is None else metric.value,
                                   None if metric is None else metric.stderr, low, high))
    return rows


def task_score_line(row: TaskComparison) -> str:
    """One task in a short line for the run summary: predicted with its interval, actual, and whether it landed
    inside (the prediction's limits are in the scaling report)."""
    p = row.prediction
    actual = "not measured" if row.actual is None else f"{row.actual:.3f} ({'inside' if row.inside else 'OUTSIDE'})"
    return f"{p.name}: predicted {p.predicted:.3f} [{row.low:.3f}, {row.high:.3f}], actual {actual}"


@dataclass(frozen=True)
class RungScores:
    """The rungs' final checkpoints scored on the eval suite: what :func:`predict_task_scores` reads, and what scoring cost."""

    n_params: tuple[float, ...]  # each rung's non-embedding parameters, smallest first
    n_tokens: tuple[float, ...]  # tokens each rung's final checkpoint saw
    items: list[TaskItems]
    unpredicted: dict[str, str]  # "<task>/<metric>" -> why it has no prediction
    higher_is_better: dict[str, bool]
    seconds: float  # wall time spent scoring the rungs, summed over them


def rung_samples(
    model_dirs: Sequence[Path], tokenizer_dir: Path, suite: Suite, run: RunConfig, items: int | None, documents: int | None
) -> list[dict[str, list[dict[str, Any]]]]:
    """lm-eval's per-item samples of each checkpoint on the suite: each task's first ``items`` items, each
    perplexity task's first ``documents`` documents (``None``: all).

    lm-eval itself, loaded as ``tasks.evals.runner`` loads every model it scores (``load_lm``),
    so rungs and target are scored alike; what differs is the limits, and that no
    table or stderr is made (the bootstrap here resamples the items). Perplexity and the other
    tasks are two runs because their limits differ: a held-out document is scored whole in
    rolling windows, many times an item's cost.
    """
    import lm_eval

    perplexity = [task for task in suite.tasks if task.startswith(f"{PPL}_")]
    groups = [(group, limit) for group, limit in (
        (perplexity, documents), ([task for task in suite.tasks if task not in perplexity], items)) if group]
    found = []
    for model_dir in model_dirs:
        lm, manager = load_lm(model_dir, suite, run, tokenizer_dir)
        samples: dict[str, list[dict[str, Any]]] = {}
        for tasks, limit in groups:
            output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, limit=limit,
                                             bootstrap_iters=0)
            samples.update(output["samples"])
        found.append(samples)
    return found

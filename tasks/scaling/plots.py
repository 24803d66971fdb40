"""Pictures and a markdown summary of the scaling-law fit, for MLflow and Prefect artifacts.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no global figure
state, no GUI backend, safe inside tasks that run in threads.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator
from numpy.typing import ArrayLike

from tasks.scaling.fit import (
    FidelityRow,
    GateDecision,
    HoldoutCheck,
    Intervals,
    Prediction,
    ScalingFit,
    compute_optimal,
    frontier_exponents,
)


def plot_loss_vs_compute(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    fit: ScalingFit,
    *,
    target: Prediction | None = None,
    actual: float | None = None,
) -> Figure:
    """Loss against compute C = 6 N D: each rung's points joined in token order, the fitted
    compute-optimal frontier across the whole range, and the target's prediction (with its
    interval) and actual loss when given."""
    n = np.asarray(n_params, dtype=np.float64)
    d = np.asarray(n_tokens, dtype=np.float64)
    observed = np.asarray(loss, dtype=np.float64)
    compute = 6 * n * d
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    sizes = np.unique(n)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(sizes)))
    for i, size in enumerate(sizes):
        rung = np.flatnonzero(n == size)
        rung = rung[np.argsort(d[rung])]
        ax.plot(compute[rung], observed[rung], "o-", ms=3, lw=1, color=colors[i],
                label=f"N = {size:.3g}")
    span = [compute.min(), compute.max()]
    if target is not None:
        span.append(6 * target.n_params * target.n_tokens)
    budgets = np.geomspace(min(span) / 2, max(span) * 2, 200)
    frontier = compute_optimal(fit, budgets)
    exp_n, exp_d = frontier_exponents(fit)
    ax.plot(budgets, frontier.loss, "k--", lw=1.5,
            label=f"frontier: N ~ C^{exp_n:.2f}, D ~ C^{exp_d:.2f}")
    if target is not None:
        c_target = 6 * target.n_params * target.n_tokens
        ax.errorbar([c_target], [target.loss], yerr=[[target.loss - target.low], [target.high - target.loss]],
                    fmt="s", color="tab:red", capsize=4, label=f"target predicted {target.loss:.3f}")
        if actual is not None:
            ax.plot([c_target], [actual], "x", color="tab:red", ms=9, mew=2, label=f"target actual {actual:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Losses span less than a decade, where log-axis ticks are few and in powers of ten:
    # evenly spaced plain numbers read better.
    ax.yaxis.set_major_locator(MaxNLocator(8))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("compute C = 6 N D (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_predicted_vs_actual(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    fit: ScalingFit,
    *,
    target: Prediction | None = None,
    actual: float | None = None,
) -> Figure:
    """Fitted against observed loss for every rung's points, and the target's prediction (with
    its interval) against its actual loss; on the diagonal the law is exact."""
    n = np.asarray(n_params, dtype=np.float64)
    observed = np.asarray(loss, dtype=np.float64)
    fitted = np.asarray(fit.loss(n, np.asarray(n_tokens, dtype=np.float64)))
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(observed, fitted, "o", ms=3, alpha=0.6, label="ladder points")
    values = [observed.min(), observed.max(), fitted.min(), fitted.max()]
    if target is not None and actual is not None:
        ax.errorbar([actual], [target.loss], yerr=[[target.loss - target.low], [target.high - target.loss]],
                    fmt="s", color="tab:red", capsize=4,
                    label=f"target: predicted {target.loss:.3f}, actual {actual:.3f}")
        values += [actual, target.low, target.high]
    low, high = min(values), max(values)
    pad = 0.02 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "k:", lw=1, label="predicted = actual")
    ax.set_xlabel("actual loss")
    ax.set_ylabel("predicted loss")
    ax.set_title(f"R^2 (log loss) {fit.r2_log_loss:.4f}, RMSE rel {fit.rmse_rel:.2%}")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)
    return fig


def summary_markdown(
    fit: ScalingFit,
    intervals: Intervals,
    holdout: HoldoutCheck | None = None,
    prediction: Prediction | None = None,
    decision: GateDecision | None = None,
    actual: float | None = None,
    unidentified: dict[str, str] | None = None,
) -> str:
    """The fit's parameters with intervals, goodness of fit, convergence, the self-check, and the
    target's prediction and gate when known, as markdown for a Prefect artifact or the CLI.

    A parameter in ``unidentified`` shows as such, with the reason, instead of as a fitted value."""
    unidentified = unidentified or {}
    bounds = intervals.params()
    level = f"{intervals.confidence:.0%}"
    lines = [
        "# Scaling-law fit",
        "",
        f"L(N, D) = E + A / N^alpha + B / D^beta, fitted to {fit.num_points} points "
        f"(Huber delta {fit.delta:g} on log loss, L-BFGS-B from {fit.starts} starts).",
        "",
        f"| parameter | value | {level} interval |",
        "|---|---|---|",
    ]
    for name, value in fit.params().items():
        low, high = bounds[name]
        shown = f"unidentified ({unidentified[name]})" if name in unidentified else f"{value:.4g}"
        lines.append(f"| {name} | {shown} | [{low:.4g}, {high:.4g}] |")
    exp_n, exp_d = frontier_exponents(fit)
    lines += [
        "",
        f"- goodness of fit: R^2 on log loss {fit.r2_log_loss:.4f}, RMSE of relative error {fit.rmse_rel:.2%}",
        f"- convergence: best start {'converged' if fit.converged else 'did NOT converge'} "
        f"({fit.message}, {fit.iterations} iterations); {fit.starts_at_best} of {fit.starts} starts "
        "reached the best objective",
        f"- bootstrap: {len(intervals.samples)} refits, {intervals.unconverged} not converged",
        f"- compute-optimal frontier: N_opt ~ C^{exp_n:.3f}, D_opt ~ C^{exp_d:.3f}",
    ]
    if holdout is not None:
        lines += [
            "",
            "## Self-check: the largest rung predicted from the others",
            "",
            f"N = {holdout.n_params:.4g} at D = {holdout.n_tokens:.4g}: predicted {holdout.predicted:.4f}, "
            f"actual {holdout.actual:.4f}, relative error {holdout.rel_error:+.2%} "
            f"(mean |error| over its {holdout.num_points} points {holdout.mean_abs_rel_error:.2%}).",
        ]
    if prediction is not None:
        actual_text = "" if actual is None else f"; actual {actual:.4f}"
        lines += [
            "",
            "## Target run",
            "",
            f"N = {prediction.n_params:.4g}, D = {prediction.n_tokens:.4g}: predicted loss {prediction.loss:.4f} "
            f"({level} interval [{prediction.low:.4f}, {prediction.high:.4f}]){actual_text}",
        ]
        if prediction.epochs is not None:
            lines.append(
                f"- data: {prediction.epochs:.2f} epochs over the train split"
                + (f", evaluated at effective data D' = {prediction.effective_tokens:.4g}" if prediction.repeated else "")
            )
        lines += [f"- **limit**: {limit}" for limit in prediction.limits]
    if decision is not None:
        lines += ["", f"**Gate: {'PASSED' if decision.passed else 'FAILED'}**", ""]
        lines += [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines) + "\n"


def fidelity_line(row: FidelityRow) -> str:
    """One prediction in a line for the pipeline's summary: predicted, interval, actual, error, epochs."""
    p = row.prediction
    actual = "pending" if row.actual is None else f"actual {row.actual:.4f} ({row.rel_error:+.2%})"
    epochs = "" if p.epochs is None else f", {p.epochs:.1f} epochs"
    limits = f", {len(p.limits)} limit(s)" if p.limits else ""
    return f"{row.name}: predicted {p.loss:.4f} [{p.low:.4f}, {p.high:.4f}], {actual}{epochs}{limits}"


def fidelity_markdown(rows: list[FidelityRow]) -> str:
    """The ladder's fidelity table: each prediction, its interval, the actual, the error, whether data repeated."""
    lines = [
        "| prediction | N | D | predicted | interval | actual | error | data repeated | limits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row.prediction
        actual = "pending" if row.actual is None else f"{row.actual:.4f}"
        error = "" if row.rel_error is None else f"{row.rel_error:+.2%}"
        repeated = "unknown" if p.epochs is None else (f"yes, {p.epochs:.1f} epochs" if p.repeated else f"no ({p.epochs:.2f} epochs)")
        lines.append(
            f"| {row.name} | {p.n_params:.4g} | {p.n_tokens:.4g} | {p.loss:.4f} | [{p.low:.4f}, {p.high:.4f}] | "
            f"{actual} | {error} | {repeated} | {len(p.limits) or 'none'} |"
        )
    lines += [""] + [f"- {row.name}: {limit}" for row in rows for limit in row.prediction.limits]
    return "\n".join(lines).rstrip() + "\n"

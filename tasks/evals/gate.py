"""The release gate: a written policy applied to a candidate's eval table, with a reason for every check.

Checks, all of which must pass for promotion:

- **floors**: each named metric is no worse than its absolute bound;
- **regression** (only when there is a champion): no named metric is worse than the
  champion's by more than max(margin, z * sqrt(se_candidate^2 + se_champion^2)), so a
  difference the eval's own noise explains is not called a regression;
- **alignment tax** (only for an aligned model, given its base model's table): each named
  metric is no worse than the base model's by more than its bound;
- **scaling-law prediction** (when the scaling stage's decision is given): that decision,
  blocking or advisory as the policy says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evals.config import GatePolicy
from tasks.evals.runner import Metric, MetricTable

FLOOR = "floor"
REGRESSION = "regression"
ALIGNMENT_TAX = "alignment_tax"
SCALING = "scaling_prediction"


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric (or to the whole candidate), and what it found."""

    rule: str
    metric: str | None
    passed: bool
    detail: str

    def line(self) -> str:
        subject = f" {self.metric}" if self.metric else ""
        return f"{'PASS' if self.passed else 'FAIL'} {self.rule}{subject}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate and every check behind it."""

    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Every check as one line, failures first."""
        return [c.line() for c in sorted(self.checks, key=lambda c: c.passed)]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def check_policy(policy: GatePolicy, metrics: list[str]) -> None:
    """Fail before any evaluation when the policy names a metric the suite does not produce."""
    unknown = sorted(policy.metrics() - set(metrics))
    if unknown:
        raise ValueError(
            f"the gate policy names metrics the eval suite does not produce: {unknown}; "
            f"known metrics: {sorted(metrics)} (fix evals.gate in the profile)"
        )


def _metric(table: MetricTable, name: str, whose: str) -> Metric:
    if name not in table:
        raise ValueError(f"the {whose} has no {name!r} in its eval table (it has {sorted(table)})")
    return table[name]


def worsening(metric: Metric, reference: float) -> float:
    """How much worse ``metric`` is than ``reference`` in its own direction (negative: better)."""
    return reference - metric.value if metric.higher_is_better else metric.value - reference


def floor_check(table: MetricTable, name: str, bound: float) -> Check:
    metric = _metric(table, name, "candidate")
    relation = ">=" if metric.higher_is_better else "<="
    ok = math.isfinite(metric.value) and worsening(metric, bound) <= 0
    return Check(FLOOR, name, ok, f"{metric.value:.4f} must be {relation} {bound:g}")


def regression_check(table: MetricTable, champion: MetricTable, name: str, margin: float, z: float) -> Check:
    candidate, best = _metric(table, name, "candidate"), _metric(champion, name, "champion")
    noise = z * math.sqrt((candidate.stderr or 0.0) ** 2 + (best.stderr or 0.0) ** 2)
    allowance = max(margin, noise)
    worse = worsening(candidate, best.value)
    ok = math.isfinite(candidate.value) and worse <= allowance
    return Check(
        REGRESSION,
        name,
        ok,
        f"candidate {candidate.value:.4f} vs champion {best.value:.4f}: worse by {worse:+.4f}, "
        f"allowed {allowance:.4f} = max(margin {margin:g}, {z:g} x combined stderr {noise / z if z else 0.0:.4f})",
    )


def alignment_tax_check(table: MetricTable, base: MetricTable, name: str, bound: float) -> Check:
    aligned, before = _metric(table, name, "aligned model"), _metric(base, name, "base model")
    tax = worsening(aligned, before.value)
    ok = math.isfinite(aligned.value) and tax <= bound
    return Check(ALIGNMENT_TAX, name, ok, f"aligned {aligned.value:.4f} vs base {before.value:.4f}: tax {tax:+.4f}, bound {bound:g}")


def scaling_check(scaling_gate: dict[str, Any], mode: str) -> Check:
    """The scaling stage's decision (``passed``, ``reasons``; ``override`` if a person overrode it)."""
    if "passed" not in scaling_gate:
        raise ValueError(f"the scaling gate input needs a 'passed' field (the scaling stage's decision), got {sorted(scaling_gate)}")
    passed = bool(scaling_gate["passed"])
    reasons = "; ".join(str(r) for r in scaling_gate.get("reasons", [])) or "no reasons given"
    if not passed and scaling_gate.get("override"):
        return Check(SCALING, None, True, f"failed but overridden ({scaling_gate['override']}): {reasons}")
    if not passed and mode == "advisory":
        return Check(SCALING, None, True, f"failed (advisory only, policy scaling_gate=advisory): {reasons}")
    return Check(SCALING, None, passed, f"{'passed' if passed else 'failed'}: {reasons}")


def judge(
    table: MetricTable,
    policy: GatePolicy,
    champion: MetricTable | None = None,
    base: MetricTable | None = None,
    scaling_gate: dict[str, Any] | None = None,
) -> Decision:
    """Apply every rule of ``policy``; the first candidate (no champion) faces the floors only."""
    checks = [floor_check(table, name, bound) for name, bound in sorted(policy.floors.items())]
    if champion is None:
        checks.append(Check(REGRESSION, None, True, "no champion yet: judged against the absolute floors only"))
    else:
        checks += [
            regression_check(table, champion, name, margin, policy.z)
            for name, margin in sorted(policy.regression_margins.items())
        ]
    if base is not None:
        checks += [alignment_tax_check(table, base, name, bound) for name, bound in sorted(policy.alignment_tax.items())]
    if scaling_gate is not None:
        checks.append(scaling_check(scaling_gate, policy.scaling_gate))
    return Decision(all(c.passed for c in checks), checks)


@task(name="release-gate", cache_policy=NO_CACHE)
def gate(
    table: MetricTable,
    policy: GatePolicy,
    champion: MetricTable | None,
    base: MetricTable | None,
    scaling_gate: dict[str, Any] | None,
) -> Decision:
    """Prefect task around :func:`judge`."""
    return judge(table, policy, champion, base, scaling_gate)


def _cell(metric: Metric | None) -> str:
    if metric is None:
        return "—"
    stderr = f" ± {metric.stderr:.4f}" if metric.stderr is not None else ""
    return f"{metric.value:.4f}{stderr}"


def metrics_markdown(table: MetricTable, champion: MetricTable | None = None, base: MetricTable | None = None) -> str:
    """The eval table as Markdown, with the champion's and the base model's columns when given."""
    header = ["metric", "candidate"] + (["champion"] if champion is not None else []) + (["base"] if base is not None else [])
    lines = ["| " + " | ".join(header) + " | better |", "|" + "---|" * (len(header) + 1)]
    for name, metric in table.items():
        cells = [name, _cell(metric)]
        if champion is not None:
            cells.append(_cell(champion.get(name)))
        if base is not None:
            cells.append(_cell(base.get(name)))
        cells.append("higher" if metric.higher_is_better else "lower")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(
    decision: Decision,
    outcome: str,
    facts: dict[str, str],
    table: MetricTable,
    policy: GatePolicy,
    champion: MetricTable | None = None,
    base: MetricTable | None = None,
) -> str:
    """The gate's report: outcome, what was compared, every check with its reason, the table, the policy."""
    checks = "\n".join(
        f"| {'✅' if c.passed else '❌'} | {c.rule} | {c.metric or '—'} | {c.detail} |"
        for c in sorted(decision.checks, key=lambda c: c.passed)
    )
    return "\n".join(
        [
            f"# Release gate: {outcome.upper()}",
            "",
            *(f"- **{key}**: {value}" for key, value in facts.items()),
            "",
            "## Checks",
            "",
            "| | rule | metric | reason |",
            "|---|---|---|---|",
            checks,
            "",
            "## Eval table",
            "",
            metrics_markdown(table, champion, base),
            "",
            "## Policy",
            "",
            "```yaml",
            policy.to_yaml().rstrip(),
            "```",
        ]
    )

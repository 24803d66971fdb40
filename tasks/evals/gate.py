"""The release gate: a written policy applied to a candidate's eval table, with a reason for every check.

Checks, all of which must pass for promotion:

- **floors**: each named metric is no worse than its absolute bound;
- **regression** (only when there is a champion): no named metric is worse than the
  champion's by more than max(margin, z * sqrt(se_candidate^2 + se_champion^2)), so a
  difference the eval's own noise explains is not called a regression;
- **alignment tax** (only for an aligned model, given its base model's table): each named
  metric is no worse than the base model's by more than its bound;
- **scaling-law prediction** (when the scaling stage's decision is given): that decision,
  blocking or advisory as the policy says (see :class:`ScalingGate`).

A check that found a failure but does not block says why (``waiver``: overridden by a person,
or advisory by policy), so a report never shows a waived failure as a plain pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evals.config import GatePolicy
from tasks.evals.runner import Metric, MetricTable

FLOOR = "floor"
REGRESSION = "regression"
ALIGNMENT_TAX = "alignment_tax"
SCALING = "scaling_prediction"

# The scaling-law gate's outcomes, as the release gate and the registry record them.
PASSED = "passed"
FAILED = "failed"
OVERRIDDEN = "overridden"
ADVISORY = "advisory"
SCALING_STATUSES = (PASSED, FAILED, OVERRIDDEN, ADVISORY)


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric (or to the whole candidate), and what it found.

    ``waiver`` is set on a check that found a failure but does not block (``passed`` is then
    True): ``overridden`` or ``advisory``; its line then says so instead of PASS.
    """

    rule: str
    metric: str | None
    passed: bool
    detail: str
    waiver: str = ""

    def line(self) -> str:
        subject = f" {self.metric}" if self.metric else ""
        outcome = self.waiver.upper() if self.waiver else ("PASS" if self.passed else "FAIL")
        return f"{outcome} {self.rule}{subject}: {self.detail}"


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


@dataclass(frozen=True)
class ScalingGate:
    """The scaling-law gate's outcome on the target run, as the pipeline passes it to the release gate.

    ``status``: ``passed``; ``failed`` (the run missed its prediction and the policy requires
    the gate: the pipeline stops, the release gate rejects); ``overridden`` (it missed, and a
    person let it through with ``scaling.override_gate``: ``override_reason`` says why);
    ``advisory`` (it missed, and the policy ``evals.gate.scaling_gate=advisory`` only reports it).
    Between flows it travels as the plain dict of :meth:`to_dict`.
    """

    status: str
    reasons: list[str]
    override_reason: str = ""
    prediction: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.status not in SCALING_STATUSES:
            raise ValueError(f"scaling gate status {self.status!r} is not one of {SCALING_STATUSES}")
        if (self.status == OVERRIDDEN) != bool(self.override_reason.strip()):
            raise ValueError(
                f"scaling gate status {self.status!r} with override_reason {self.override_reason!r}: an overridden "
                "gate needs the reason it was overridden for (scaling.override_reason), and only an overridden one has one"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ScalingGate:
        """The outcome from its dict form, refusing a dict with missing or unknown fields."""
        known = {f.name for f in fields(cls)}
        missing, unknown = {"status", "reasons"} - set(raw), set(raw) - known
        if missing or unknown:
            raise ValueError(
                f"the scaling gate input needs the fields {sorted(known)} (status and reasons required); "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}: pass ScalingGate.to_dict()"
            )
        return cls(**{**raw, "reasons": [str(r) for r in raw["reasons"]]})

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a flow parameter carries."""
        return asdict(self)

    def under(self, mode: str) -> ScalingGate:
        """This outcome under the policy's ``scaling_gate`` mode: a miss is advisory or failed as the policy says.

        The policy in force decides, whatever the caller marked a miss; a pass and a person's
        override stay as they are.
        """
        if self.status not in (FAILED, ADVISORY):
            return self
        return replace(self, status=ADVISORY if mode == ADVISORY else FAILED)

    @property
    def blocks(self) -> bool:
        """Whether the pipeline stops here and the release gate rejects."""
        return self.status == FAILED


def scaling_outcome(target: dict[str, Any], policy: GatePolicy) -> ScalingGate:
    """The scaling stage's decision on the target run (``target_gate``'s result) under the release policy.

    Whether the pipeline goes on: a pass and an override (``scaling.override_gate``, kept with its
    reason) do; a miss goes on as advisory under ``evals.gate.scaling_gate=advisory`` and stops
    the pipeline (:attr:`ScalingGate.blocks`) under ``required``.
    """
    outcome = ScalingGate(target["status"], list(target["reasons"]), target["override_reason"], target["prediction"])
    return outcome.under(policy.scaling_gate)


def scaling_check(scaling_gate: dict[str, Any], mode: str) -> Check:
    """The scaling-law gate's outcome (a :class:`ScalingGate` dict) under the policy's ``scaling_gate`` mode.

    A pass passes; an override passes, reported as overridden with its reason; a miss is
    reported as advisory under ``advisory`` and fails the check under ``required``.
    """
    outcome = ScalingGate.from_dict(scaling_gate).under(mode)
    reasons = "; ".join(outcome.reasons) or "no reasons given"
    if outcome.status == OVERRIDDEN:
        return Check(SCALING, None, True, f"missed its prediction, overridden ({outcome.override_reason}): {reasons}", OVERRIDDEN)
    if outcome.status == ADVISORY:
        return Check(SCALING, None, True, f"missed its prediction (policy scaling_gate=advisory): {reasons}", ADVISORY)
    return Check(SCALING, None, outcome.status == PASSED, f"{outcome.status}: {reasons}")


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
        f"| {'⚠️ ' + c.waiver if c.waiver else '✅' if c.passed else '❌'} | {c.rule} | {c.metric or '—'} | {c.detail} |"
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

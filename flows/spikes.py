"""The spike suite as a flow: every detector policy over every seeded spike scenario; the report is an artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from tasks.spikes.suite import markdown, run_suite

REPORT_KEY = "spike-suite"


@task(name="spike-suite-runs")
def run_suite_task(steps: int, onset: int, policies: list[str] | None, scenarios: list[str] | None) -> list[dict[str, Any]]:
    return run_suite(steps, onset, policies, scenarios)


@task(name="spike-suite-report")
def report_task(rows: list[dict[str, Any]], steps: int) -> str:
    report = markdown(rows, steps)
    create_markdown_artifact(key=REPORT_KEY, markdown=report, description="Spike detectors compared on the same seeded spikes")
    return report


@flow(name="spikes")
def spikes_flow(steps: int = 200, onset: int = 120, policies: list[str] | None = None, scenarios: list[str] | None = None) -> str:
    """Run the spike suite (``tasks.spikes.suite``; all policies and scenarios unless named) and publish its table."""
    return report_task(run_suite_task(steps, onset, policies, scenarios), steps)

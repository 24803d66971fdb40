"""The spike-suite flow on one fault scenario and two policies: its table is a Prefect artifact."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.spikes import REPORT_KEY, spikes_flow


@pytest.mark.slow
def test_spike_suite_flow_reports_detection_per_policy(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    report = spikes_flow(steps=30, onset=22, policies=["ladder", "megatron"], scenarios=["nan-loss"])
    rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| nan-loss |")}
    assert set(rows) == {"ladder", "megatron"}
    assert "| 22 | True | 0 |" in rows["ladder"] and "| 22 | True | 0 |" in rows["megatron"]  # both catch the NaN at once
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_KEY])))
    assert artifact.type == "markdown" and "| policy | recall |" in artifact.data

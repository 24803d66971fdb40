"""A new dataset version starts exactly one pipeline run; the same version again starts none.

Against a real Prefect server: the pipeline deployment is registered from infra/prefect.yaml
with `ladder deploy`, the data changes through `dvc add`, and `ladder data-version` records it.
There is no worker, so triggered runs stay scheduled; the test counts the runs the trigger's
automation created and reads the md5 each was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from app.deploy import emitted_versions
from ladder import services
from tasks.data.version import dataset_version
from ladder.workspace import Workspace

PREFECT_PORT = 14201
PREFECT_URL = f"http://127.0.0.1:{PREFECT_PORT}"
# The server turns an event into a flow run within a second or two; this only bounds a failure.
RUN_TIMEOUT_S = 90


def ladder(ws: Workspace, *args: str) -> str:
    """Run the `ladder` command line against the test's Prefect server, as a user would."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["LADDER_PREFECT_URL"] = PREFECT_URL
    cmd = [str(Path(sys.executable).parent / "ladder"), "--root", str(ws.root), *args]
    done = subprocess.run(cmd, cwd=ws.root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def new_data_version(ws: Workspace, text: str) -> str:
    """Change the data and version it with DVC, as after an edit or a `git pull`; returns the new md5."""
    ws.data.mkdir(exist_ok=True)
    (ws.data / "corpus.txt").write_text(text)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "add", "data"], cwd=ws.root, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return dataset_version(ws)


def triggered_runs() -> Counter[str]:
    """md5 -> number of pipeline runs the data-version automation created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{PREFECT_URL}/api"}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("pipeline/ladder-pipeline")
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))
    # The nightly schedule creates runs too; only the trigger's carry a dataset version.
    return Counter(r.parameters["dataset_md5"] for r in runs if r.created_by and r.created_by.type == "AUTOMATION")


def wait_for_run(md5: str) -> Counter[str]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (runs := triggered_runs())[md5] == 0:
        assert time.monotonic() < deadline, f"no pipeline run for dataset {md5} within {RUN_TIMEOUT_S}s: {runs}"
        time.sleep(1)
    return runs


@pytest.fixture
def prefect_server(workspace: Workspace):
    services.up(workspace, only={"prefect"}, prefect_port=PREFECT_PORT)
    try:
        yield workspace
    finally:
        services.down(workspace)


@pytest.mark.slow
def test_each_new_dataset_version_starts_one_pipeline_run(prefect_server):
    ws = prefect_server
    ladder(ws, "deploy", "--name", "ladder-pipeline")

    first = new_data_version(ws, "From fairest creatures we desire increase,\n")
    assert "new version" in ladder(ws, "data-version")
    assert wait_for_run(first) == {first: 1}

    second = new_data_version(ws, "That thereby beauty's rose might never die,\n")
    assert second != first
    assert "new version" in ladder(ws, "data-version")
    assert "already recorded" in ladder(ws, "data-version")
    assert emitted_versions(ws) == [first, second]
    # Lose the record of what was emitted: the event goes out again, with the same id, and the
    # server drops it as a duplicate.
    (ws.state / "data-versions.jsonl").unlink()
    assert "new version" in ladder(ws, "data-version")

    # The server takes events off one queue in order of arrival, and dropping a repeat is a
    # lookup while a run takes an evaluation, an action and an API call: once a later version's
    # run exists, any run the repeats above could have caused would exist too.
    third = new_data_version(ws, "But as the riper should by time decease,\n")
    assert "new version" in ladder(ws, "data-version")
    assert wait_for_run(third) == {first: 1, second: 1, third: 1}

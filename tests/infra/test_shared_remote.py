"""A dataset version curated in one workspace is trained in another that never saw the raw corpus.

Two workspaces share one DVC remote and one real Prefect server. Workspace A curates a corpus
and pushes it (`ladder data`), then announces the version (`ladder data-version`). Workspace B
serves the pipeline deployment of infra/prefect.yaml (made small); the event starts it for
exactly that md5, which B pulls from the remote, trains on, and registers with a lineage that
names it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ladder import services
from ladder.lineage import nodes
from ladder.workspace import Workspace
from tasks.data.dataset import CACHE_DIR
from tests.flows.small_pipeline import SMALL_OVERRIDES, small_corpus
from tests.infra.test_trigger import PREFECT_URL, ladder

pytestmark = pytest.mark.slow

PREFECT_PORT = int(PREFECT_URL.rsplit(":", 1)[1])
REPO = Path(__file__).resolve().parents[2]
# The small pipeline trains a ladder, a target and two aligned models: minutes on 2 cores.
RUN_TIMEOUT_S = 900


def _small_deployment(path: Path) -> Path:
    """infra/prefect.yaml with the pipeline's parameters (and its trigger's) set to the small pipeline."""
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    (pipeline,) = [d for d in spec["deployments"] if d["name"] == "ladder-pipeline"]
    pipeline["parameters"]["overrides"] = list(SMALL_OVERRIDES)
    for trigger in pipeline["triggers"]:
        trigger["parameters"]["overrides"] = list(SMALL_OVERRIDES)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def workspaces(two_workspaces: tuple[Workspace, Workspace]) -> Iterator[tuple[Workspace, Workspace]]:
    a, _ = two_workspaces
    services.up(a, only={"prefect"}, prefect_port=PREFECT_PORT)
    try:
        yield two_workspaces
    finally:
        services.down(a)


@pytest.fixture
def served_in_b(workspaces: tuple[Workspace, Workspace], tmp_path: Path) -> Iterator[subprocess.Popen]:
    _, b = workspaces
    prefect_file = _small_deployment(tmp_path / "prefect.yaml")
    script = (
        "import sys; from pathlib import Path; from prefect import serve; "
        "from app.deploy import runner_deployments; "
        "serve(*runner_deployments(['ladder-pipeline'], Path(sys.argv[1])))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(LADDER_ROOT=str(b.root), PREFECT_API_URL=f"{PREFECT_URL}/api", MLFLOW_TRACKING_URI=b.mlflow_db_uri,
               OMP_NUM_THREADS="1")
    log = (tmp_path / "serve-b.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script, str(prefect_file)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def _finished_runs() -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{PREFECT_URL}/api"}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("pipeline/ladder-pipeline")
            from prefect.client.schemas.filters import DeploymentFilter

            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))
    return [r for r in runs if r.state is not None and r.state.is_final()]


def test_a_version_pushed_from_one_workspace_trains_in_another(workspaces, served_in_b, tmp_path: Path) -> None:
    a, b = workspaces
    corpus = small_corpus(tmp_path / "corpus")
    ladder(a, "data", "--set", f"data.input.input_dir={corpus}")
    out = ladder(a, "data-version")
    assert "new version" in out
    md5 = yaml.safe_load(a.data_dvc.read_text())["outs"][0]["md5"]

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (finished := _finished_runs()):
        assert served_in_b.poll() is None, (tmp_path / "serve-b.log").read_text()[-4000:]
        assert time.monotonic() < deadline, f"no finished pipeline run in B within {RUN_TIMEOUT_S}s"
        time.sleep(5)
    (run,) = finished
    assert run.parameters["dataset_md5"] == md5
    assert run.state.is_completed(), (tmp_path / "serve-b.log").read_text()[-6000:]

    # B never held the raw corpus or a data/ checkout: the version came from the remote.
    assert not b.data.exists() and not b.data_dvc.exists()
    assert (b.state / CACHE_DIR / md5.removesuffix(".dir") / "dataset.json").is_file()
    import mlflow
    from mlflow.tracking import MlflowClient

    # B's store, not whichever one an earlier test in this process pointed MLflow at.
    mlflow.set_tracking_uri(b.mlflow_db_uri)
    versions = MlflowClient().search_model_versions("name LIKE 'ladder-tiny%'")
    assert len(versions) == 2 and all(v.tags["ladder.lineage.dataset_md5"] == md5 for v in versions)
    from tasks.evals import lineage

    for version in versions:  # the base model (ladder-tiny) and the aligned one (ladder-tiny-chat)
        datasets = [node for node in nodes(lineage.load(version.run_id)) if "dvc_remote" in node]
        assert datasets and all(d["value"] == md5 and d["dvc_remote"] == str(a.dvc_remote) for d in datasets)
        # Pulled, so no data artifact here: the dataset itself names the raw corpus it came from.
        assert all(d["inputs"]["corpus"]["value"] for d in datasets)

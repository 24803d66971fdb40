"""The MLflow server dies mid-run and comes back: training goes on, and every metric reaches the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ladder import services
from ladder.workspace import Workspace
from tasks.train.callbacks import METRICS_FILE, MLflowCallback
from tasks.train.launch import REPO, child_env, launch_command, write_config
from tasks.train.loop import RESULT
from train_fixtures import restored_environ, tiny_config

STEPS = 100


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[Workspace]:
    """An ``mlflow server`` (SQLite) of the test's own on a free loopback port; the client gives up fast."""
    ws = Workspace(tmp_path / "ws")
    port = _free_port()
    with restored_environ() as environ:
        environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        # One try of 2 s per request: the callback's own retries are what this test is about.
        environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
        services.up(ws, only={"mlflow"}, mlflow_port=port)
        mlflow.set_tracking_uri(environ["MLFLOW_TRACKING_URI"])
        try:
            yield ws
        finally:
            services.down(ws)
            mlflow.set_tracking_uri(None)


def _logged_steps(run_dir: Path) -> dict[int, float]:
    if not (run_dir / METRICS_FILE).exists():
        return {}
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _wait(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_training_outlives_a_tracking_server_outage_and_every_metric_reaches_the_run(
    shards_root: Path, tmp_path: Path, tracking: Workspace
) -> None:
    client = MlflowClient()
    experiment = client.create_experiment("outage", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    cfg = tiny_config(max_steps=STEPS, log_every=1)
    run_dir = tmp_path / "run"
    config_path = write_config(cfg, run_dir, shards_root / "train")
    command = launch_command(cfg, config_path, run_dir, shards_root / "train", shards_root / "validation", mlflow_run_id=run_id)
    with (tmp_path / "train.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: len(client.get_metric_history(run_id, "loss")) >= 5, "loss in MLflow", proc)
            os.killpg(int((tracking.services / "mlflow.pid").read_text()), signal.SIGKILL)
            down_at = max(_logged_steps(run_dir))
            _wait(lambda: max(_logged_steps(run_dir)) >= down_at + 20, "training while the server is down", proc)
            services.up(tracking, only={"mlflow"}, mlflow_port=int(os.environ["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]))
            assert proc.wait(timeout=120) == 0, (tmp_path / "train.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()

    result = json.loads((run_dir / RESULT).read_text())
    assert result["steps"] == STEPS
    assert result["mlflow"]["failed"] > 0, "the outage was met"
    assert (result["mlflow"]["dropped"], result["mlflow"]["rejected"], result["mlflow"]["unsent"]) == (0, 0, 0)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == _logged_steps(run_dir), "every step's loss is in the run, once the server is back"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [STEPS]

    # What the server refuses for good (here: a run that does not exist) is counted and dropped, not retried forever.
    refused = MLflowCallback("0" * 32, close_timeout=10)
    refused.on_log(None, 1, {"loss": 1.0})  # type: ignore[arg-type]  # the callback reads nothing from the trainer here
    refused.close()
    assert (refused.rejected, refused.failed, refused.unsent) == (1, 0, 0)

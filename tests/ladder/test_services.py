"""The real servers: started in the background, healthy, sharing the workspace's stores, stopped."""

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ladder import runtime, services
from ladder.workspace import Workspace


@pytest.mark.slow
def test_services_up_share_the_local_store_and_come_down(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    started = services.up(ws, prefect_port=14200, mlflow_port=15000)
    try:
        assert {s.name for s in started} == {"prefect", "mlflow"}
        assert all(runtime.healthy(s.health_url) for s in started)
        # A run logged through the server lands in the SQLite store that flows use without it.
        mlflow.set_tracking_uri("http://127.0.0.1:15000")
        with mlflow.start_run(experiment_id=MlflowClient().create_experiment(
            "svc", artifact_location=(ws.mlflow_artifact_root / "svc").as_uri()
        )) as run:
            mlflow.log_metric("m", 1.5)
            mlflow.log_text("hello", "note.txt")
        direct = MlflowClient(tracking_uri=ws.mlflow_db_uri)
        assert direct.get_run(run.info.run_id).data.metrics["m"] == 1.5
        assert (ws.mlflow_artifact_root / "svc").exists()
        # a second `up` finds them healthy and starts nothing new
        pids = {p.name: p.read_text() for p in ws.services.glob("*.pid")}
        services.up(ws, prefect_port=14200, mlflow_port=15000)
        assert {p.name: p.read_text() for p in ws.services.glob("*.pid")} == pids
    finally:
        stopped = services.down(ws)
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ws.mlflow_db_uri))
    assert set(stopped) == {"prefect", "mlflow"}
    assert not any(runtime.healthy(s.health_url) for s in started)

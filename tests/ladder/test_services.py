"""The real servers: started in the background, healthy, sharing the workspace's stores, stopped; their secrets.

The servers with authentication on are in tests/infra/test_auth.py.
"""

import os
import subprocess

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
        # nor do open servers pass for guarded ones
        monkeypatch.setenv(services.PREFECT_SERVER_AUTH, "admin:a-real-secret")
        monkeypatch.setenv(services.MLFLOW_ADMIN_PASSWORD, "admin-secret-12")
        monkeypatch.setenv(services.MLFLOW_SECRET_KEY, "flask-secret-key-1")
        with pytest.raises(RuntimeError, match="prefect already runs at .* without authentication"):
            services.up(ws, auth=True, prefect_port=14200, mlflow_port=15000)
    finally:
        stopped = services.down(ws)
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ws.mlflow_db_uri))
    assert set(stopped) == {"prefect", "mlflow"}
    assert not any(runtime.healthy(s.health_url) for s in started)


def _secrets(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_load_from_a_private_file_and_the_environment_wins(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "repo")
    ws.root.mkdir()
    secrets = _secrets(tmp_path / "secrets.env", "# team\nPREFECT_API_AUTH_STRING=u:from-file\nLADDER_READERS=a:b=c\n")
    monkeypatch.setenv(services.SECRETS_ENV, str(secrets))
    monkeypatch.setenv("LADDER_READERS", "from-env")
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    assert services.load_secrets(ws) == {"PREFECT_API_AUTH_STRING": "u:from-file"}
    assert os.environ["LADDER_READERS"] == "from-env"

    secrets.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        services.load_secrets(ws)
    monkeypatch.setenv(services.SECRETS_ENV, str(tmp_path / "absent.env"))
    assert services.load_secrets(ws) == {}


def test_a_secrets_file_git_would_commit_is_refused(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setenv(services.SECRETS_ENV, str(_secrets(tmp_path / "team.env", "K=V\n")))
    with pytest.raises(ValueError, match="not git-ignored"):
        services.load_secrets(ws)
    (tmp_path / ".gitignore").write_text("team.env\n")
    monkeypatch.delenv("K", raising=False)
    assert services.load_secrets(ws) == {"K": "V"}


def test_auth_refuses_missing_or_placeholder_secrets_before_starting_anything(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    monkeypatch.setenv(services.PREFECT_SERVER_AUTH, "admin:change-me")
    with pytest.raises(ValueError, match="PREFECT_SERVER_API_AUTH_STRING still holds the placeholder"):
        services.up(ws, auth=True, prefect_port=14209, mlflow_port=15009)
    monkeypatch.setenv(services.PREFECT_SERVER_AUTH, "admin:a-real-secret")
    monkeypatch.delenv(services.MLFLOW_ADMIN_PASSWORD, raising=False)
    with pytest.raises(ValueError, match="MLFLOW_AUTH_ADMIN_PASSWORD is not set"):
        services.up(ws, auth=True, prefect_port=14209, mlflow_port=15009)
    assert not list(ws.services.glob("*.pid"))


def test_accounts_come_from_the_secrets_with_real_passwords(monkeypatch):
    monkeypatch.setenv(services.PIPELINE_PASSWORD, "pipeline-secret-1")
    monkeypatch.setenv(services.RELEASE_MANAGERS, "rita:release-secret-1")
    monkeypatch.setenv(services.READERS, "rob:reader-secret-12, ann:reader-secret-34")
    assert [(a.username, a.role) for a in services.accounts_from_env()] == [
        (services.PIPELINE_USER, "pipeline"), ("rita", "release-manager"), ("rob", "reader"), ("ann", "reader")]
    monkeypatch.setenv(services.READERS, "rob:short")
    with pytest.raises(ValueError, match="rob in LADDER_READERS is a placeholder or shorter than 12"):
        services.accounts_from_env()
    monkeypatch.setenv(services.READERS, "rob")
    with pytest.raises(ValueError, match="NAME:PASSWORD"):
        services.accounts_from_env()

"""Start and stop the local Prefect and MLflow servers, in the background, on loopback.

Both servers keep their state in the workspace (Prefect's SQLite under ``PREFECT_HOME``,
MLflow's SQLite store and artifact root under ``.ladder/mlflow``), the same files that flows
use when no server runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ladder.runtime import healthy, mlflow_server_url, prefect_api_url
from ladder.workspace import Workspace


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    ui_url: str


def services(ws: Workspace, host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5000) -> list[Service]:
    bindir = Path(sys.executable).parent
    return [
        Service(
            "prefect",
            [str(bindir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            f"http://127.0.0.1:{prefect_port}/api/health",
            f"http://127.0.0.1:{prefect_port}",
        ),
        Service(
            "mlflow",
            [
                str(bindir / "mlflow"), "server",
                "--host", host, "--port", str(mlflow_port),
                "--backend-store-uri", ws.mlflow_db_uri,
                "--default-artifact-root", ws.mlflow_artifact_root.as_uri(),
                "--no-serve-artifacts",
                "--workers", "1",
            ],
            f"http://127.0.0.1:{mlflow_port}/health",
            f"http://127.0.0.1:{mlflow_port}",
        ),
    ]


def _pid_file(ws: Workspace, name: str) -> Path:
    return ws.services / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        # A child of this process that exited stays a zombie, which kill(pid, 0) still finds.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent or init reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(ws: Workspace, timeout: float = 180.0, only: set[str] | None = None, **ports: int) -> list[Service]:
    """Start every service (or those named in ``only``) not yet healthy and wait until they answer their health check."""
    ws.services.mkdir(parents=True, exist_ok=True)
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    ws.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PREFECT_HOME=str(ws.prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true",
        # MLflow's job runner (GenAI scorers, trace rollups) is seven more processes that ladder
        # never uses; without them the server also stops within down()'s grace period.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    env.pop("PREFECT_API_URL", None)
    started = services(ws, **ports)
    # The UI calls the API at the port in the server's settings, not the one given by --port.
    env["PREFECT_UI_API_URL"] = next(s.ui_url for s in started if s.name == "prefect") + "/api"
    started = [svc for svc in started if only is None or svc.name in only]
    for svc in started:
        if healthy(svc.health_url):
            continue
        log = (ws.services / f"{svc.name}.log").open("ab")
        proc = subprocess.Popen(
            svc.command, cwd=ws.root, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        _pid_file(ws, svc.name).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    for svc in started:
        while not healthy(svc.health_url):
            pid_file = _pid_file(ws, svc.name)
            if pid_file.exists() and not _alive(int(pid_file.read_text())):
                raise RuntimeError(f"{svc.name} server exited at start: see {ws.services / (svc.name + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{svc.name} server not healthy at {svc.health_url} after {timeout:.0f}s: "
                    f"see {ws.services / (svc.name + '.log')}"
                )
            time.sleep(0.5)
    return started


def down(ws: Workspace) -> list[str]:
    """Stop the services this workspace started; returns the names stopped."""
    stopped = []
    for pid_file in sorted(ws.services.glob("*.pid")) if ws.services.exists() else []:
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink()
    return stopped


def urls() -> dict[str, str]:
    return {"prefect": prefect_api_url().removesuffix("/api"), "mlflow": mlflow_server_url()}

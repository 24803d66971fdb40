"""Process environment for ladder: offline hubs, Prefect home and API, MLflow tracking URI.

``configure`` must run before Prefect is imported, because Prefect reads its settings at
import time. The command line calls it first; tests call it from their fixtures.
"""

from __future__ import annotations

import os
import urllib.request

from ladder.workspace import Workspace

PREFECT_URL = "http://127.0.0.1:4200"
MLFLOW_URL = "http://127.0.0.1:5000"


def healthy(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def prefect_api_url() -> str:
    return os.environ.get("LADDER_PREFECT_URL", PREFECT_URL).rstrip("/") + "/api"


def mlflow_server_url() -> str:
    return os.environ.get("LADDER_MLFLOW_URL", MLFLOW_URL).rstrip("/")


def configure(ws: Workspace) -> dict[str, str]:
    """Point Prefect and MLflow at the running servers, or at the same local stores without them."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    if "PREFECT_API_URL" not in os.environ and healthy(prefect_api_url() + "/health"):
        env["PREFECT_API_URL"] = prefect_api_url()
    if "MLFLOW_TRACKING_URI" not in os.environ:
        server = mlflow_server_url()
        env["MLFLOW_TRACKING_URI"] = server if healthy(server + "/health") else ws.mlflow_db_uri
    ws.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    return env

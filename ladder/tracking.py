"""MLflow runs with ladder's lineage: config and its hash, git commit, stage version, inputs.

Every experiment's artifact location is a directory under the workspace, whether the client
talks to the tracking server or writes the SQLite store directly: both see the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from ladder.artifacts import Artifact
from ladder.config import Section
from ladder.workspace import Workspace
from ladder.tags import ARTIFACT_PATH, ARTIFACT_VERSION, GIT_COMMIT, PREFECT_FLOW_RUN, PRODUCED, STAGE, input_tags

EXPERIMENT = "ladder"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def experiment_id(ws: Workspace, name: str = EXPERIMENT) -> str:
    """The experiment's id, created with an artifact location inside the workspace."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ws.mlflow_db_uri))
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (ws.mlflow_artifact_root / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextmanager
def stage_run(
    ws: Workspace,
    stage: str,
    config: Section,
    artifact: Artifact | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    produces: list[tuple[str, str]] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, carrying the lineage every run must have.

    Inside another stage's run (a ladder rung inside the scaling run) it becomes a child run;
    ``parent_run_id`` names the parent where the active run is another thread's. The run is
    recorded as the producer of ``artifact`` and of every ``(stage, version)`` in ``produces``
    (an artifact whose version is known before it is built, or a second one the run made).
    """
    exp = experiment_id(ws)
    nested = parent_run_id is None and mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=exp, run_name=stage, nested=nested, parent_run_id=parent_run_id) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config.to_dict()).items()})
        mlflow.log_param("config_hash", config.hash())
        mlflow.log_text(config.to_yaml(), "config.yaml")
        lineage = {STAGE: stage, GIT_COMMIT: ws.git_commit(), **prefect_flow_run()}
        made = [(artifact.stage, artifact.version)] if artifact is not None else []
        made += produces or []
        if made:
            lineage[PRODUCED] = ",".join(f"{s}:{v}" for s, v in made)
        if artifact is not None:
            lineage[ARTIFACT_VERSION] = artifact.version
            lineage[ARTIFACT_PATH] = str(artifact.path)
            lineage.update(input_tags(artifact.manifest["inputs"]))
        lineage.update(tags or {})
        mlflow.set_tags(lineage)
        yield run


def prefect_flow_run() -> dict[str, str]:
    """The tag naming the current Prefect flow run (none outside a flow run)."""
    from prefect.runtime import flow_run

    return {PREFECT_FLOW_RUN: str(flow_run.id)} if flow_run.id else {}


def producing_run(ws: Workspace, version: str) -> dict[str, str]:
    """The MLflow run and Prefect flow run that produced the artifact ``version`` (the first, if rebuilt)."""
    runs = MlflowClient().search_runs(
        [experiment_id(ws)],
        filter_string=f"tags.`{PRODUCED}` LIKE '%:{version}%'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if not runs:
        return {}
    return {"mlflow_run": runs[0].info.run_id, "prefect_flow_run": runs[0].data.tags.get(PREFECT_FLOW_RUN, "")}

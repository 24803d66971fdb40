"""Where a model version came from: the chain of versions and runs behind it, as registry tags.

Every link is a ``ladder.lineage.<key>`` tag on the model version. Links the evaluate flow can
find by itself are found: the data and tokenizer runs are the latest MLflow runs of those
stages for the same dataset md5; the rest (ladder run, alignment runs, ...) are passed in by
the flow that produced the model. A link nobody knows is recorded as ``unknown``, so a
missing link is visible rather than absent.
"""

from __future__ import annotations

import json
from typing import Any

from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.data.version import dvc_remote

PREFIX = "ladder.lineage."
UNKNOWN = "unknown"

# The chain in the order a reader follows it, with what each link names.
CHAIN = {
    "git_commit": "commit of the code that built and evaluated the model",
    "dataset_md5": "DVC md5 of the curated dataset (data.dvc outs[0].md5)",
    "dvc_remote": "DVC remote holding that dataset version",
    "data_run": "MLflow run of the data stage for that dataset",
    "data_quality_report": "Great Expectations Data Docs of that dataset's quality gate",
    "tokenizer_run": "MLflow run of the tokenizer stage for that dataset",
    "tokenizer_version": "artifact version of the chosen tokenizer",
    "ladder_run": "MLflow run of the scaling-law ladder",
    "scaling_prediction": "the ladder's predicted loss for this run, with its interval",
    "scaling_gate": "the scaling-law prediction gate's decision",
    "training_runs": "MLflow run(s) that trained the model",
    "alignment_runs": "MLflow runs of alignment (SFT, DPO) that produced it",
    "eval_run": "MLflow run of this evaluation (results, samples, gate report)",
    "eval_suite": "artifact version of the eval suite it was scored on",
    "prefect_flow_run_id": "Prefect flow run that evaluated and registered it",
    "prefect_flow_run_url": "that flow run in the Prefect UI",
}


def latest_stage_run(ws: Workspace, stage: str, dataset_md5: str) -> Any | None:
    """The most recent MLflow run of ``stage`` for this dataset version, or None."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id(ws)],
        filter_string=f"tags.`ladder.stage` = '{stage}' and tags.`ladder.data.md5` = '{dataset_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def prefect_flow_run() -> dict[str, str]:
    """The current Prefect flow run's id and UI link (empty outside a flow run)."""
    from prefect.runtime import flow_run

    found = {}
    if flow_run.id:
        found["prefect_flow_run_id"] = str(flow_run.id)
        # Without a configured UI the runtime still formats a link, starting with "None".
        if str(flow_run.ui_url).startswith("http"):
            found["prefect_flow_run_url"] = str(flow_run.ui_url)
    return found


def collect(
    ws: Workspace,
    dataset_md5: str,
    training_run_id: str | None,
    eval_run_id: str,
    suite_version: str,
    scaling_gate: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every link of the chain this process can know, ``extra`` (from the calling flow) taking precedence."""
    links: dict[str, str] = {
        "git_commit": ws.git_commit(),
        "dataset_md5": dataset_md5,
        "dvc_remote": dvc_remote(ws),
        "eval_run": eval_run_id,
        "eval_suite": suite_version,
        **prefect_flow_run(),
    }
    if training_run_id:
        links["training_runs"] = training_run_id
    data_run = latest_stage_run(ws, "data", dataset_md5)
    if data_run is not None:
        links["data_run"] = data_run.info.run_id
        links["data_quality_report"] = f"{data_run.info.artifact_uri}/data_docs/index.html"
    tokenizer_run = latest_stage_run(ws, "tokenizer", dataset_md5)
    if tokenizer_run is not None:
        links["tokenizer_run"] = tokenizer_run.info.run_id
        links["tokenizer_version"] = tokenizer_run.data.tags.get("ladder.artifact_version", UNKNOWN)
    if scaling_gate is not None:
        links["scaling_gate"] = json.dumps({k: v for k, v in scaling_gate.items() if k != "prediction"}, sort_keys=True, default=str)
        if "prediction" in scaling_gate:
            links["scaling_prediction"] = json.dumps(scaling_gate["prediction"], sort_keys=True, default=str)
    for key, value in (extra or {}).items():
        if not key.replace("_", "").isalnum():
            raise ValueError(f"lineage key {key!r} must be letters, digits and underscores (e.g. ladder_run)")
        links[key] = str(value)
    return {**{key: links.get(key, UNKNOWN) for key in CHAIN}, **{k: v for k, v in sorted(links.items()) if k not in CHAIN}}


def to_tags(links: dict[str, str]) -> dict[str, str]:
    return {f"{PREFIX}{key}": value for key, value in links.items()}


def from_tags(tags: dict[str, str]) -> dict[str, str]:
    """The chain recorded on a model version, in chain order, extra links after."""
    links = {key.removeprefix(PREFIX): value for key, value in tags.items() if key.startswith(PREFIX)}
    ordered = {key: links.pop(key) for key in CHAIN if key in links}
    return {**ordered, **dict(sorted(links.items()))}

"""Where a model version came from: the walk of its manifest chain, logged once on the version.

The tree (see :mod:`ladder.lineage`) starts at the evaluation and holds the model's artifact
and everything it was built from (for an aligned model: DPO, its preference pairs, SFT, the
instruction set, the base model, its shards and tokenizer), the eval suite, and what the
calling flow adds (the ladder fit the target was predicted by, the scaling gate's decision),
down to the dataset's DVC md5, the data artifact and the raw corpus's content hash. It is
logged as ``lineage.json`` in the eval run (the version's source run); a few links are
copied into ``ladder.lineage.*`` tags so versions can be searched by them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ladder import lineage
from ladder.artifacts import Artifact, ArtifactRef, ArtifactStore
from ladder.lineage import Node
from ladder.tags import LINEAGE_PREFIX
from ladder.tracking import producing_run
from ladder.workspace import Workspace
from tasks.data.dataset import resolve_dataset
from tasks.data.version import dvc_remote

if TYPE_CHECKING:  # the stage imports this module to log what it collects
    from tasks.evals.gate import ScalingGate
    from tasks.evals.stage import Candidate

LINEAGE_JSON = "lineage.json"
DATASET_INPUT = "dataset"


def dataset_node(ws: Workspace, store: ArtifactStore, md5: str, runs: lineage.Runs, seen: dict[str, Node]) -> Node:
    """A dataset version: the DVC remote holding it and, below it, the data artifact or the raw corpus hash."""
    dataset = resolve_dataset(ws, md5)
    node: Node = {"value": md5, "dvc_remote": dvc_remote(ws), "source": dataset.source}
    data = lineage.containing(store, str(dataset.path))
    if data is not None:
        node["inputs"] = {"data": lineage.walk(store, data, runs, seen=seen)}
    else:  # pulled from the remote: the dataset itself records what it was curated from
        node["inputs"] = {"corpus": {"value": dataset.corpus}}
    return node


def collect(
    ws: Workspace,
    candidate: Candidate,
    eval_run_id: str,
    suite: Artifact,
    scaling_gate: ScalingGate | None = None,
    extra: dict[str, ArtifactRef] | None = None,
) -> Node:
    """The candidate's tree. ``extra`` names artifacts the caller knows that are not the model's
    inputs (``scaling``: the ladder that predicted it): each is walked too.

    A candidate from outside the store has no manifest chain: its path and the caller's word for
    its training run are all that is known.
    """
    from prefect.runtime import flow_run

    store = ws.store()
    # Most stages read the dataset and several share the tokenizer: each artifact's run is
    # searched for, and the dataset resolved, once per tree, however many branches reach it.
    runs = functools.cache(lambda version: producing_run(ws, version))
    seen: dict[str, Node] = {}
    datasets: dict[str, Node] = {}

    def expand(name: str, value: str) -> Node | None:
        if name != DATASET_INPUT:
            return None
        if value not in datasets:
            datasets[value] = dataset_node(ws, store, value, runs, seen)
        return datasets[value]

    def walk(artifact: Artifact) -> Node:
        return lineage.walk(store, artifact, runs, expand, seen)

    model: Node = (
        walk(store.get(candidate.artifact)) if candidate.artifact
        else {"value": str(candidate.model_dir), "mlflow_run": candidate.training_run_id or ""}
    )
    inputs: dict[str, Node] = {"model": model, "eval_suite": walk(suite)}
    for name, ref in sorted((extra or {}).items()):
        inputs[name] = walk(store.get(ref))
    if scaling_gate is not None:
        outcome = scaling_gate.to_dict()
        inputs["scaling_gate"] = {"value": outcome.pop("status"), **{k: str(v) for k, v in sorted(outcome.items())}}
    return {
        "value": f"evaluation run {eval_run_id}",
        "eval_run": eval_run_id,
        "git_commit": store.git_commit,
        "prefect_flow_run": str(flow_run.id) if flow_run.id else "",
        "inputs": inputs,
    }


def _first(tree: Node, key: str, value: str) -> Node | None:
    return next((node for node in lineage.nodes(tree) if node.get(key) == value), None)


def to_tags(tree: Node) -> dict[str, str]:
    """The searchable links: dataset md5, raw corpus, the model's artifact and training run, suite, scaling fit, scaling gate."""
    model = tree["inputs"]["model"]
    tags = {
        "model_artifact": f"{model['stage']}:{model['version']}" if "stage" in model else model["value"],
        "training_runs": model.get("mlflow_run", ""),
        "eval_suite": tree["inputs"]["eval_suite"]["version"],
        "git_commit": tree["git_commit"],
        "prefect_flow_run_id": tree["prefect_flow_run"],
    }
    datasets = [n for n in lineage.nodes(tree) if "dvc_remote" in n]
    if datasets:
        tags["dataset_md5"] = datasets[0]["value"]
    data = _first(tree, "stage", "data")
    corpus = (data or {}).get("inputs", {}).get("corpus") or (datasets[0]["inputs"].get("corpus") if datasets else None)
    if corpus:
        tags["corpus"] = str(corpus["value"])
    for name in ("scaling", "scaling_gate"):
        if name in tree["inputs"]:
            node = tree["inputs"][name]
            tags[name] = node.get("version") or str(node["value"])
    return {f"{LINEAGE_PREFIX}{key}": value for key, value in tags.items() if value}


def load(eval_run_id: str) -> Node:
    """The tree logged with a version's evaluation."""
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{eval_run_id}/{LINEAGE_JSON}")


def log(eval_run_id: str, tree: Node) -> None:
    """Log the tree once, as ``lineage.json`` in the eval run."""
    from mlflow.tracking import MlflowClient

    MlflowClient().log_dict(eval_run_id, tree, LINEAGE_JSON)


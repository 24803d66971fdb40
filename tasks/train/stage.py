"""The training stage under the stage contract, with its MLflow run and Prefect report.

The artifact ``train/<version>/`` holds ``model/`` (HF format with the tokenizer),
``metrics.jsonl``, ``loss_curve.png``, ``ledger.json`` (every spike event), ``spikes/``
(evidence per event) and ``result.json``. Checkpoints live outside it, in
``.ladder/runs/train/<version>/``: a run killed mid-way and started again with the same
version resumes from them, and a finished one leaves them for inspection.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, ArtifactRef, ArtifactStore, Code, StageOutput, stage_version
from ladder.tags import ARTIFACT_VERSION, LOADER_SEED, input_tags
from ladder.workspace import Workspace
from models.llama import LOADING
from tasks.tokenizer.stage import SHARDS_DIR, SHARDS_STAGE, TOKENIZER_DIR, Tokenized
from tasks.train.config import TrainConfig

log = logging.getLogger(__name__)

STAGE = "train"
# The shard reader takes the format from its writer in tasks.tokenizer.shards; numpy draws the
# loader's shuffle order.
CODE = Code(
    ("tasks.train", "tasks.tokenizer.shards", "models"),
    ("torch", "deepspeed", "transformers", "numpy"),
)
MODEL_DIR = "model"
COPIED = (MODEL_DIR, "metrics.jsonl", "loss_curve.png", "result.json", "spikes", "checkpoints/ledger.json")


@dataclass(frozen=True)
class TrainInputs:
    """Where the training data and tokenizer are, and the versions that identify them."""

    train_shards: Path
    val_shards: Path
    tokenizer_dir: Path
    versions: dict[str, str] = field(default_factory=dict)


def resolve_inputs(ws: Workspace, tokenized: Tokenized | None) -> TrainInputs:
    """The shards and tokenizer ``tokenized`` names, found in this workspace's store; by default
    the latest ``shards`` artifact and the tokenizer and dataset it was built from."""
    store = ws.store()
    if tokenized is None:
        latest = store.latest(SHARDS_STAGE)
        if latest is None:
            raise ValueError(f"no '{SHARDS_STAGE}' artifact in {ws.artifacts}: run `ladder tokenizer` first")
        tokenized = Tokenized.of_shards(latest)
    root = store.get(tokenized.shards).path / SHARDS_DIR
    tokenizer = store.get(tokenized.tokenizer)
    versions = {"shards": tokenized.shards.version, "tokenizer": tokenized.tokenizer.version, "dataset": tokenized.dataset_md5}
    return TrainInputs(root / "train", root / "validation", tokenizer.path / TOKENIZER_DIR, versions)


def _log_outputs(out: Path) -> None:
    """The final model (transformers flavor), plot, ledger and evidence into the active run; never fatal."""
    import mlflow

    try:
        mlflow.log_artifact(str(out / "loss_curve.png"))
        mlflow.log_artifact(str(out / "result.json"))
        if (out / "ledger.json").exists():
            mlflow.log_artifact(str(out / "ledger.json"))
        if (out / "spikes").exists():
            mlflow.log_artifacts(str(out / "spikes"), artifact_path="spikes")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = out / MODEL_DIR
        with LOADING:
            components: dict[str, Any] = {"model": AutoModelForCausalLM.from_pretrained(model_dir)}
        if (model_dir / "tokenizer_config.json").exists():
            components["tokenizer"] = AutoTokenizer.from_pretrained(model_dir)
        # Explicit requirements: MLflow's inference adds torchvision for any torch model (and
        # fails without it) and runs a slow subprocess; these two are what loading needs.
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
        mlflow.transformers.log_model(components, name="model", task="text-generation", pip_requirements=requirements)
    except Exception as err:  # noqa: BLE001 - the artifact is complete without the tracking copy
        log.warning("could not log the model to MLflow (the stage artifact has it): %s", err)


@contextmanager
def _tracked(ws: Workspace, cfg: TrainConfig, tags: dict[str, str], version: str) -> Iterator[str | None]:
    """The MLflow run of the training, or None when tracking is unreachable: neither a server
    that is down at the start nor one that goes away before the end fails the stage."""
    from ladder.tracking import stage_run

    context = stage_run(ws, STAGE, cfg, tags=tags, produces=[(STAGE, version)])
    try:
        run = context.__enter__()
    except Exception as err:  # noqa: BLE001 - training does not depend on the tracking server
        log.warning("MLflow is unreachable, training without a run: %s", err)
        yield None
        return
    try:
        yield run.info.run_id
    except BaseException as err:
        with suppress(Exception):
            context.__exit__(type(err), err, err.__traceback__)  # marks the run failed
        raise
    try:
        context.__exit__(None, None, None)
    except Exception as err:  # noqa: BLE001
        log.warning("could not close the MLflow run (the stage artifact is complete): %s", err)


def build_training(
    ws: Workspace, cfg: TrainConfig, inputs: TrainInputs, run_dir: Path, out: Path, parent_run_id: str | None = None
) -> StageOutput:
    """Train (resuming ``run_dir``) in child processes and copy the results into ``out``.

    ``parent_run_id`` makes the MLflow run a child of that run (a scaling ladder's rungs)."""
    from tasks.train.launch import run_training

    tags = {
        ARTIFACT_VERSION: run_dir.name,
        LOADER_SEED: str(cfg.seed),
        **input_tags(inputs.versions),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with _tracked(ws, cfg, tags, run_dir.name) as run_id:
        result = run_training(cfg, run_dir, inputs.train_shards, inputs.val_shards, inputs.tokenizer_dir, run_id)
        result["mlflow_run_id"] = run_id
        for name in COPIED:
            source = run_dir / name
            target = out / Path(name).name
            if source.is_dir():
                shutil.copytree(source, target)
            elif source.exists():
                shutil.copy2(source, target)
        (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        if run_id is not None:
            _log_outputs(out)
    return StageOutput(
        counts={"steps": result["steps"], "tokens_seen": result["tokens_seen"], "spike_events": len(result["spike_events"])},
        metrics={key: result[key] for key in ("final_val_loss", "tokens_per_s", "mfu")},
    )


# The stage contract caches by version, so Prefect's own cache is off.
@task(name="resolve-train-inputs", cache_policy=NO_CACHE)
def resolve_inputs_task(ws: Workspace, tokenized: Tokenized | None) -> TrainInputs:
    """Prefect wrapper of ``resolve_inputs``."""
    return resolve_inputs(ws, tokenized)


def _not_a_spike_report(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a crashed or killed training (the retry resumes from its checkpoints), not a run
    the spike guard gave up on: that one would only spend its budget again."""
    from tasks.train.launch import TrainingFailed

    error = state.result(raise_on_failure=False)
    return not (isinstance(error, TrainingFailed) and error.report is not None)


def run_dir(ws: Workspace, cfg: TrainConfig, inputs: TrainInputs) -> Path:
    """Where ``train_model`` trains ``cfg`` (resolved) on ``inputs``: the checkpoints a resume, or a decay branch
    of the run, starts from."""
    return ws.state / "runs" / STAGE / stage_version(STAGE, cfg, inputs.versions, CODE)


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_not_a_spike_report)
def train_model(
    ws: Workspace, cfg: TrainConfig, inputs: TrainInputs, parent_run_id: str | None = None
) -> tuple[Artifact, bool]:
    """The ``train`` artifact for this config and these inputs: ``(artifact, cached)``.

    A retry after a crash resumes from the run's checkpoints. A spike report (retry budget
    exhausted) becomes a Prefect markdown artifact before the task fails with it. With
    ``parent_run_id`` the MLflow run is that run's child.
    """
    from tasks.train.shards import PackedShards
    from tasks.train.continued import resolve
    from tasks.train.launch import TrainingFailed

    cfg = resolve(cfg, PackedShards(inputs.train_shards))
    directory = run_dir(ws, cfg, inputs)
    try:
        return ws.store().run_stage(
            STAGE, cfg, inputs.versions, lambda out: build_training(ws, cfg, inputs, directory, out, parent_run_id), code=CODE
        )
    except TrainingFailed as err:
        if err.report is not None:
            _markdown_artifact(err.report["events"], failure=err.report["report"])
        raise


@dataclass(frozen=True)
class TrainedModel:
    """What training hands evaluation and alignment: the model's artifact and the run that logged it."""

    ref: ArtifactRef
    mlflow_run_id: str | None

    def model_dir(self, store: ArtifactStore) -> Path:
        """The HF checkpoint (tokenizer beside it) in ``store``."""
        return store.get(self.ref).path / MODEL_DIR


@dataclass(frozen=True)
class TrainResult:
    """The train flow's result: the model and how its run went."""

    model: TrainedModel
    final_val_loss: float
    final_val_loss_stderr: float | None
    """The validation loss's own noise (``Trainer.validation``), which the scaling gate holds a miss against."""
    steps: int
    spike_events: int
    """How many times the spike guard rolled back."""
    tokens_per_s: float
    mfu: float
    cached: bool


@task(name="publish-train-report", cache_policy=NO_CACHE, retries=2)
def publish(artifact: Artifact, cached: bool) -> TrainResult:
    """A Prefect markdown artifact of the run and its spike events; returns the flow's result."""
    result = json.loads(artifact.file("result.json").read_text())
    if not cached:
        _markdown_artifact(result["spike_events"], result=result)
    return TrainResult(
        model=TrainedModel(artifact.ref, result.get("mlflow_run_id")),
        final_val_loss=result["final_val_loss"],
        final_val_loss_stderr=result["final_val_loss_stderr"],
        steps=result["steps"],
        spike_events=len(result["spike_events"]),
        tokens_per_s=result["tokens_per_s"],
        mfu=result["mfu"],
        cached=cached,
    )


def _markdown_artifact(events: list[dict[str, Any]], result: dict[str, Any] | None = None, failure: str | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="train-spike-events",
        markdown=spike_markdown(events, result, failure),
        description="Loss spikes the guard caught, what it rolled back and skipped, and the evidence.",
    )


def spike_markdown(events: list[dict[str, Any]], result: dict[str, Any] | None = None, failure: str | None = None) -> str:
    """The report a data team reads: one section per event, with the skipped window's evidence."""
    lines = ["# Training: spike guard", ""]
    if result is not None:
        lines += [
            f"- final validation loss: **{result['final_val_loss']:.4f}** after {result['steps']} steps",
            f"- throughput: {result['tokens_per_s']:.0f} tokens/s, MFU {result['mfu']:.2%}",
            "",
        ]
    if failure is not None:
        lines += ["**The run failed:**", "", "```", failure, "```", ""]
    if not events:
        lines.append("No spikes: the guard never rolled back.")
    for event in events:
        evidence = event.get("evidence") or {}
        lines += [
            f"## Attempt {event['attempt']}: step {event['spike']['step']} ({event['spike']['reason']})",
            "",
            event["summary"],
            "",
            f"- detected at step {event['detected_at_step']}; injected fault: {event.get('fault') or 'none'}",
            f"- skipped window: {evidence.get('batches', 0)} batches, {evidence.get('sequences', 0)} sequences, "
            f"{evidence.get('documents', 0)} documents by source {evidence.get('documents_by_source', {})}",
            f"- rare-token share: {evidence.get('rare_token_share', 0.0):.2%} in the window vs "
            f"{evidence.get('corpus_rare_token_share', 0.0):.2%} in the corpus",
            "",
        ]
        top = evidence.get("top_documents") or []
        if top:
            lines += ["| document | source | tokens in window | rare-token share |", "|---|---|---|---|"]
            lines += [
                f"| {d['id']} | {d['source']} | {d['tokens_in_window']} | {d['rare_token_share']:.2%} |" for d in top[:10]
            ]
            lines.append("")
    return "\n".join(lines)

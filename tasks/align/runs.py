"""MLflow runs of an alignment: one ``align`` run, and under it one run per model trained (``sft``, ``dpo``).

Every run carries the lineage to its base model (directory, content version, registry
version, training run) and its data (dataset md5, instruction set version), and logs the
data it trained on as MLflow dataset inputs.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.config import Section
from ladder.tags import ALIGN_PASSED_TAX, BASE_MODEL_PREFIX, DATASET, INSTRUCTIONS
from ladder.tracking import stage_run
from ladder.workspace import Workspace
from tasks.align.checkpoints import ModelRef
from tasks.align.instructions import InstructionSet, Item
from tasks.align.preferences import PreferenceSet
from tasks.align.training import LOG_HISTORY

REPORT = "alignment_report.md"


def lineage_tags(base: ModelRef, instructions: InstructionSet, dataset_md5: str) -> dict[str, str]:
    """The tags every alignment run carries."""
    tags = {
        DATASET: dataset_md5,
        INSTRUCTIONS: instructions.version,
        f"{BASE_MODEL_PREFIX}dir": str(base.model_dir),
        f"{BASE_MODEL_PREFIX}version": base.version,
    }
    if base.registry_version:
        tags[f"{BASE_MODEL_PREFIX}registry_version"] = base.registry_version
    if base.training_run_id:
        tags[f"{BASE_MODEL_PREFIX}training_run"] = base.training_run_id
    return tags


def _items_frame(items: list[Item]) -> Any:
    import pandas as pd

    return pd.DataFrame([{"id": i.id, "task": i.task, "template": i.template, "prompt": i.prompt, "response": i.response}
                         for i in items])


def _log_instructions(instructions: InstructionSet, split: str, context: str) -> None:
    import mlflow

    dataset = mlflow.data.from_pandas(
        _items_frame(instructions.items(split)), source=str(instructions.artifact.path),
        name=f"ladder-instructions-{split}", digest=instructions.version,
    )
    mlflow.log_input(dataset, context=context)


@task(name="open-align-run", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def open_align_run(ws: Workspace, cfg: Section, base: ModelRef, instructions: InstructionSet, dataset_md5: str) -> str:
    """The parent ``align`` run: config, lineage, the instruction data as dataset inputs. Returns its id."""
    import mlflow

    with stage_run(ws, "align", cfg, instructions.artifact, tags=lineage_tags(base, instructions, dataset_md5)) as run:
        _log_instructions(instructions, "train", "training")
        _log_instructions(instructions, "heldout", "evaluation")
        mlflow.log_dict(instructions.artifact.counts, "instructions/counts.json")
        mlflow.log_artifact(str(instructions.artifact.file("dropped.jsonl")), "instructions")
        return run.info.run_id


@task(name="log-training-run", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def log_training_run(
    ws: Workspace,
    stage: str,
    settings: Section,
    model: ModelRef,
    parent_run_id: str,
    tags: dict[str, str],
    instructions: InstructionSet | None = None,
    preferences: PreferenceSet | None = None,
) -> str:
    """A child run for one trained model: its config, the loss per step, counts, and the data it trained on."""
    import mlflow
    import pandas as pd

    if model.artifact is None:
        raise ValueError(f"{model.model_dir} is not a stage artifact's model: only trained models get a training run")
    artifact = model.artifact
    # The preference pairs a DPO round trained on have no run of their own: this one made them.
    produces = [(preferences.artifact.stage, preferences.artifact.version)] if preferences is not None else []
    with stage_run(ws, stage, settings, artifact, tags=tags, parent_run_id=parent_run_id, produces=produces) as run:
        mlflow.log_metrics({k: float(v) for k, v in artifact.metrics.items() if isinstance(v, int | float)})
        for record in json.loads(artifact.file(LOG_HISTORY).read_text()):
            # TRL's num_tokens sums the attention mask: with the 4D packing mask that counts (query, key) pairs.
            logged = {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch", "num_tokens")}
            mlflow.log_metrics(logged, step=int(record["step"]))
        mlflow.log_dict(artifact.counts, "counts.json")
        if instructions is not None:
            _log_instructions(instructions, "train", "training")
        if preferences is not None:
            # The prompt's text, not its turns: MLflow infers a dataset schema from flat columns.
            frame = pd.DataFrame([
                {"item_id": p.item_id, "task": p.task, "prompt": "\n\n".join(m["content"] for m in p.messages),
                 "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward, "rejected_reward": p.rejected_reward}
                for p in preferences.pairs()
            ])
            dataset = mlflow.data.from_pandas(frame, source=str(preferences.artifact.path), name="ladder-preference-pairs",
                                              digest=preferences.version)
            mlflow.log_input(dataset, context="training")
            mlflow.log_dict(preferences.artifact.counts, "preferences/counts.json")
        return run.info.run_id


@task(name="log-alignment-report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def log_report(
    parent_run_id: str,
    rows: list[dict[str, Any]],
    margin: dict[str, float],
    passed: bool,
    markdown: str,
    answers: dict[str, list[dict[str, Any]]],
) -> None:
    """The table, margin and tax verdict on the ``align`` run, and the report as a Prefect artifact."""
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    client = MlflowClient()
    for row in rows:
        for name, value in row.items():
            if isinstance(value, int | float):
                client.log_metric(parent_run_id, f"{row['model']}/{name}", float(value))
    for name, value in margin.items():
        client.log_metric(parent_run_id, f"reward_margin/{name}", float(value))
    client.set_tag(parent_run_id, ALIGN_PASSED_TAX, str(passed).lower())
    client.log_dict(parent_run_id, rows, "table.json")
    client.log_text(parent_run_id, markdown, REPORT)
    for model, records in answers.items():
        client.log_text(parent_run_id, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), f"answers/{model}.jsonl")
    create_markdown_artifact(key="align-report", markdown=markdown, description="Alignment: gains and tax")
    create_table_artifact(key="align-table", table=rows, description="Base, SFT and DPO on held-out instruction tasks and the eval suite")

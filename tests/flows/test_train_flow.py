"""The train flow end to end: Prefect (test harness), MLflow (SQLite store), a training process."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from transformers import AutoModelForCausalLM, AutoTokenizer

from flows.train import train_flow
from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.train.launch import TrainingFailed

# The training tests' synthetic shards and tokenizer (tests have no packages, so by path).
sys.path.insert(0, str(Path(__file__).parents[1] / "tasks" / "train"))
from train_fixtures import BOUNDARY, VOCAB, write_shards, write_tokenizer  # noqa: E402

from tests.flows.tokenized import store_tokenized  # noqa: E402

MD5 = "0123456789abcdef0123456789abcdef.dir"
OVERRIDES = [
    # The tiny profile's target (size and token budget) gives way to this small, fixed run.
    "train.target_params=null", "train.max_tokens=null",
    "train.model.d_model=64", "train.model.n_heads=2", "train.model.n_kv_heads=2", "train.model.intermediate_size=128",
    "train.model.max_seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=8", "train.max_steps=60",
    "train.precision=fp32", "train.log_every=5", "train.checkpoint.every_steps=10", "train.schedule.warmup_steps=10",
    "train.spike_guard.warmup_steps=15", "train.eval.every_steps=30",
    "train.faults=[{step: 30, kind: random_batch}]",
]


def test_flow_trains_rolls_back_tracks_and_caches(
    prefect_harness: None, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tokenized = store_tokenized(workspace, write_shards(tmp_path / "shards"), write_tokenizer(tmp_path / "tokenizer"), MD5)
    kwargs = {"overrides": OVERRIDES, "tokenized": tokenized}
    first = train_flow(**kwargs)

    assert not first.cached and first.steps == 60 and first.spike_events == 1
    assert 0 < first.final_val_loss < 3.0 and first.tokens_per_s > 0 and 0 < first.mfu < 1
    model_dir = first.model.model_dir(workspace.store())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == VOCAB and tokenizer.eos_token_id == BOUNDARY

    # MLflow: the run's config, lineage, per-step metrics, the spike event and the model.
    run = MlflowClient().get_run(first.model.mlflow_run_id)
    assert run.data.params["max_steps"] == "60" and "config_hash" in run.data.params
    assert run.data.tags["ladder.data.md5"] == MD5 and run.data.tags["ladder.loader_seed"] == "0"
    assert run.data.tags["ladder.artifact_version"] == first.model.ref.version
    assert "ladder.git_commit" in run.data.tags
    assert run.data.tags["ladder.spike.1.reason"] == "loss"
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "spike.loss", "spike.threshold"} <= run.data.metrics.keys()
    losses = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(losses) >= 60 // 5
    logged = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "ledger.json", "spikes", "result.json"} <= logged
    (model_entry,) = mlflow.search_logged_models(
        experiment_ids=[experiment_id(workspace)], filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list"
    )
    assert model_entry.name == "model" and "transformers" in mlflow.models.get_model_info(model_entry.model_uri).flavors

    # Prefect: the spike report is a markdown artifact (the session's server also holds other tests' reports).
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-spike-events"])))
    assert any("Attempt 1: step 30 (loss)" in report.data for report in reports)

    # Unchanged rerun: a cache hit, no new training and no new MLflow run.
    again = train_flow(**kwargs)
    assert again.cached and again.model == first.model
    runs = MlflowClient().search_runs([experiment_id(workspace)], filter_string="tags.`ladder.stage` = 'train'")
    assert len(runs) == 1


def test_flow_fails_with_the_spike_report_and_does_not_retry_it(
    prefect_harness: None, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tokenized = store_tokenized(
        workspace, write_shards(tmp_path / "shards", train_docs=100, val_docs=20), write_tokenizer(tmp_path / "tokenizer"), MD5
    )
    overrides = [*OVERRIDES[:-1], "train.max_steps=10", "train.spike_guard.max_retries=0",
                 "train.faults=[{step: 3, kind: nan_loss}]"]
    with pytest.raises(TrainingFailed, match="retry budget of 0 rollbacks exhausted"):
        train_flow(overrides=overrides, tokenized=tokenized)
    (run_dir,) = (workspace.state / "runs" / "train").iterdir()
    assert "resumed from" not in (run_dir / "train.log").read_text()  # the task did not retry it
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-spike-events"])))
    assert any("final spike at step 3: non-finite" in r.data for r in reports)

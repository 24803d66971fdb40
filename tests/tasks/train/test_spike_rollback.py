"""The spike guard closes the loop: detect, roll back, skip the window, finish near the control run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tasks.train.launch import TrainingFailed, run_training
from tasks.train.loop import train
from train_fixtures import restored_environ, tiny_config

STEPS = 160
FAULT_STEP = 40


@pytest.fixture(scope="module")
def control(shards_root: Path, tmp_path_factory) -> dict[str, Any]:
    """The same run without faults; the guard never fires on it."""
    with restored_environ():
        result = train(tiny_config(max_steps=STEPS), shards_root / "train", shards_root / "validation",
                       tmp_path_factory.mktemp("control"))
    assert result["spike_events"] == []
    return result


def _single_rollback(result: dict[str, Any], control: dict[str, Any], run_dir: Path, reason: str, fault: str) -> dict[str, Any]:
    assert len(result["spike_events"]) == 1
    event = result["spike_events"][0]
    assert event["spike"]["step"] == FAULT_STEP and event["spike"]["reason"] == reason
    assert event["fault"] == fault
    assert event["detected_at_step"] - FAULT_STEP <= 2
    assert event["rollback_step"] < FAULT_STEP
    start, stop = event["skipped"]
    assert event["batches_skipped"] == stop - start > FAULT_STEP - event["rollback_step"]
    ledger = json.loads((run_dir / "checkpoints" / "ledger.json").read_text())
    assert ledger["skips"] == [[start, stop]], "the skip list is kept with the checkpoints for later resumes"
    assert result["steps"] == STEPS
    assert result["final_val_loss"] == pytest.approx(control["final_val_loss"], rel=0.02)
    evidence = event["evidence"]
    assert evidence["batches"] == stop - start and evidence["documents"] > 0
    assert set(evidence["documents_by_source"]) == {"plays", "sonnets", "letters"}
    assert 0.0 <= evidence["rare_token_share"] <= 1.0 and "corpus_rare_token_share" in evidence
    top = evidence["top_documents"][0]
    assert {"id", "source", "meta", "tokens_in_window", "rare_token_share"} <= top.keys()
    rows = (run_dir / "spikes" / "evidence-1.jsonl").read_text().splitlines()
    assert len(rows) == evidence["documents"]
    rollback_lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"rollback"' in line]
    assert [r["spike"]["step"] for r in rollback_lines] == [FAULT_STEP]  # what the plot marks
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    return event


def test_injected_random_batch_is_rolled_back_and_skipped(shards_root: Path, tmp_path: Path, control: dict[str, Any]) -> None:
    cfg = tiny_config(max_steps=STEPS, faults=[{"step": FAULT_STEP, "kind": "random_batch"}])
    result = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    event = _single_rollback(result, control, tmp_path, "loss", "random_batch")
    assert event["spike"]["loss"] > event["spike"]["threshold"]
    assert event["lr_scale"] == cfg.spike_guard.lr_scale


def test_injected_nan_loss_is_rolled_back_and_skipped(shards_root: Path, tmp_path: Path, control: dict[str, Any]) -> None:
    cfg = tiny_config(max_steps=STEPS, faults=[{"step": FAULT_STEP, "kind": "nan_loss"}])
    result = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    event = _single_rollback(result, control, tmp_path, "non-finite", "nan_loss")
    assert event["spike"]["threshold"] is None


def test_exhausted_retry_budget_fails_the_run_with_a_report_of_every_attempt(shards_root: Path, tmp_path: Path) -> None:
    faults = [{"step": 30, "kind": "random_batch"}, {"step": 45, "kind": "nan_loss"}]
    cfg = tiny_config(max_steps=STEPS, faults=faults, spike_guard={"warmup_steps": 15, "max_retries": 1})
    with pytest.raises(TrainingFailed) as failed:
        run_training(cfg, tmp_path, shards_root / "train", shards_root / "validation")
    report = str(failed.value)
    assert "retry budget of 1 rollbacks exhausted" in report
    assert "attempt 1: step 30 loss" in report and "(injected random_batch)" in report
    assert "final spike at step 45: non-finite" in report
    assert [e["attempt"] for e in failed.value.report["events"]] == [1]
    ledger = json.loads((tmp_path / "checkpoints" / "ledger.json").read_text())
    assert ledger["failed"]["spike"]["step"] == 45
    assert not (tmp_path / "model").exists()


def test_a_resume_from_before_the_rollback_skips_the_same_batches(shards_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(max_steps=25, faults=[{"step": 18, "kind": "nan_loss"}],
                      spike_guard={"warmup_steps": 5}, checkpoint={"every_steps": 10, "keep_last": 5})
    first = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    (event,) = first["spike_events"]
    assert event["rollback_step"] == 10
    reference = load_file(tmp_path / "model" / "model.safetensors")
    # As if the process died right after the rollback: only checkpoints from before the spike remain.
    for ckpt in (tmp_path / "checkpoints").glob("ckpt-*"):
        if int(ckpt.name.rsplit("-", 1)[1]) > 10:
            shutil.rmtree(ckpt)
    again = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    assert again["resumed_from"].endswith("step-0000010") and len(again["spike_events"]) == 1  # no new spike
    final = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(final[name], reference[name]) for name in reference)

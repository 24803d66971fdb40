"""The spike guard closes the loop: detect, roll back, skip the window, finish near the control run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tasks.tokenizer.shards import TOKENS
from tasks.train.data import MAIN, TrainData
from tasks.train.faults import FAULTED_MANIFEST, FAULTED_SHARDS_DIR
from tasks.train.launch import TrainingFailed, run_training
from tasks.train.loop import Trainer, train
from tasks.train.shards import PackedShards
from tasks.train.spike import RetryBudgetExhausted
from train_fixtures import Continued, restored_environ, tiny_config

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
    assert {"plays", "sonnets", "letters"} <= set(evidence["documents_by_source"])
    assert 0.0 <= evidence["rare_token_share"] <= 1.0 and "corpus_rare_token_share" in evidence
    top = evidence["top_documents"][0]
    assert {"id", "source", "meta", "tokens_in_window", "rare_token_share"} <= top.keys()
    rows = (run_dir / "spikes" / "evidence-1.jsonl").read_text().splitlines()
    assert len(rows) == evidence["documents"]
    rollback_lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"rollback"' in line]
    assert [r["spike"]["step"] for r in rollback_lines] == [FAULT_STEP]  # what the plot marks
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    return event


def _document_ids(data: TrainData, index: int) -> set[str]:
    """Ids of the documents with tokens in mix batch ``index`` (of the main shards)."""
    _, batch = data.global_batch(index)
    return {data.shards[MAIN].docs[row]["id"] for row in np.unique(batch.doc_index[batch.doc_index >= 0]).tolist()}


def test_injected_random_batch_is_rolled_back_and_skipped(shards_root: Path, tmp_path: Path, control: dict[str, Any]) -> None:
    cfg = tiny_config(max_steps=STEPS, faults=[{"step": FAULT_STEP, "kind": "random_batch"}])
    result = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    event = _single_rollback(result, control, tmp_path, "loss", "random_batch")
    assert event["spike"]["loss"] > event["spike"]["threshold"]
    assert event["lr_scale"] == cfg.spike_guard.lr_scale
    # The evidence names what the bad step trained on: the fault's tokens, not the documents they replaced.
    rows = [json.loads(line) for line in (tmp_path / "spikes" / "evidence-1.jsonl").read_text().splitlines()]
    (injected,) = [row for row in rows if row["source"] == "injected"]
    assert (injected["meta"]["kind"], injected["meta"]["step"]) == ("random_batch", FAULT_STEP)
    data = TrainData({MAIN: PackedShards(shards_root / "train")}, 0.0, cfg.micro_batch_size, cfg.seed)
    _, bad_batch = data.global_batch(FAULT_STEP - 1)  # one mix batch a step here
    assert injected["tokens_in_window"] == int((bad_batch.doc_index >= 0).sum())
    assert sum(row["tokens_in_window"] for row in rows) == event["evidence"]["tokens"]  # each token counted once


def test_a_garbage_window_in_the_shards_is_rolled_back_skipped_and_does_not_return(
    shards_root: Path, tmp_path: Path, control: dict[str, Any]
) -> None:
    cfg = tiny_config(max_steps=STEPS, faults=[{"step": FAULT_STEP, "kind": "shard_window", "mode": "garbage"}])
    original = (shards_root / "train" / TOKENS).read_bytes()
    result = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    event = _single_rollback(result, control, tmp_path, "loss", "shard_window")
    assert all(map(math.isfinite, (result["final_val_loss"], event["spike"]["loss"])))

    # The corruption is in a copy made for the run, in the rows of step 40's batch, and only there.
    assert (shards_root / "train" / TOKENS).read_bytes() == original
    clean = PackedShards(shards_root / "train")
    faulted = PackedShards(tmp_path / FAULTED_SHARDS_DIR / MAIN)
    data = TrainData({MAIN: clean}, 0.0, cfg.micro_batch_size, cfg.seed)
    _, bad_batch = data.global_batch(FAULT_STEP - 1)  # one mix batch a step here
    changed = np.flatnonzero((np.asarray(faulted.tokens) != np.asarray(clean.tokens)).any(axis=1))
    assert set(changed.tolist()) == set(bad_batch.rows.tolist())

    # The evidence names the documents that were trained in the skipped window: the corrupted
    # ones among them, each under its own id, and no stand-in for them.
    (manifest,) = json.loads((tmp_path / FAULTED_SHARDS_DIR / FAULTED_MANIFEST).read_text())
    corrupted = _document_ids(data, FAULT_STEP - 1)
    assert set(manifest["documents"]) == corrupted
    start, stop = event["skipped"]
    in_window = set().union(*(_document_ids(data, index) for index in range(start, stop)))
    rows = [json.loads(line) for line in (tmp_path / "spikes" / "evidence-1.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == in_window >= corrupted
    assert "injected" not in event["evidence"]["documents_by_source"]
    shares = {row["id"]: row["rare_token_share"] for row in rows}
    assert max(shares[doc] for doc in corrupted) > max(shares[doc] for doc in in_window - corrupted)


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


@pytest.mark.parametrize("fault", [
    {"kind": "random_batch"},
    {"kind": "shard_window", "mode": "garbage"},
    {"kind": "shard_window", "mode": "repeat"},
], ids=["random_batch", "shard_garbage", "shard_repeat"])
def test_skipping_the_window_is_what_keeps_bad_data_from_spiking_again(
    shards_root: Path, tmp_path: Path, fault: dict[str, Any]
) -> None:
    # The fault lives in step 40's batches. A guard that rolls back but skips nothing replays them
    # and meets it again, until the budget runs out; with the skip it never returns (the tests above).
    cfg = tiny_config(max_steps=45, faults=[{"step": FAULT_STEP, **fault}],
                      spike_guard={"max_retries": 2, "skip_window": False})
    with pytest.raises(RetryBudgetExhausted) as failed:
        train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    assert [(e["spike"]["step"], e["fault"], e["batches_skipped"]) for e in failed.value.events] == [
        (FAULT_STEP, fault["kind"], 0)
    ] * 2
    assert failed.value.last.step == FAULT_STEP
    assert "retry budget of 2 rollbacks exhausted" in str(failed.value)
    ledger = json.loads((tmp_path / "checkpoints" / "ledger.json").read_text())
    assert ledger["skips"] == [] and ledger["failed"]["spike"]["step"] == FAULT_STEP


def test_bad_data_over_four_steps_takes_one_rollback_whose_window_covers_it(shards_root: Path, tmp_path: Path) -> None:
    # Two loader batches per optimizer step: the margin must count steps, as the rest of the guard does.
    faults = [{"step": step, "kind": "random_batch"} for step in range(FAULT_STEP, FAULT_STEP + 4)]
    cfg = tiny_config(max_steps=50, micro_batch_size=4, faults=faults)
    assert cfg.grad_accumulation == 2
    result = train(cfg, shards_root / "train", shards_root / "validation", tmp_path)
    (event,) = result["spike_events"]
    assert event["spike"]["step"] == FAULT_STEP
    # The spike step's batches end at mix number FAULT_STEP x 2; the margin runs on from there.
    margin = cfg.spike_guard.rollback_margin_steps
    assert event["skipped"][1] == (FAULT_STEP + margin) * cfg.grad_accumulation >= (FAULT_STEP + 3) * cfg.grad_accumulation


class _Crash(Exception):
    """Stands for the training process dying."""


def test_a_crash_right_after_a_rollback_resumes_from_the_known_good_checkpoint(
    shards_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lr x100 at step 10 wrecks the weights the step-10 checkpoint then saves; step 11's loss shows it.
    cfg = tiny_config(max_steps=25, faults=[{"step": 10, "kind": "lr_multiply"}],
                      spike_guard={"warmup_steps": 5}, checkpoint={"every_steps": 5, "keep_last": 5})
    uninterrupted = train(cfg, shards_root / "train", shards_root / "validation", tmp_path / "uninterrupted")
    (event,) = uninterrupted["spike_events"]
    assert (event["spike"]["step"], event["rollback_step"]) == (11, 5)

    rollback = Trainer._rollback

    def rollback_then_die(self: Trainer) -> None:
        rollback(self)
        raise _Crash

    monkeypatch.setattr(Trainer, "_rollback", rollback_then_die)
    with pytest.raises(_Crash):
        train(cfg, shards_root / "train", shards_root / "validation", tmp_path / "crashed")
    monkeypatch.undo()
    left = sorted(path.name.rsplit("-", 1)[1] for path in (tmp_path / "crashed" / "checkpoints").glob("ckpt-*"))
    assert left == ["0000000", "0000005"], "the rollback deleted the suspect step-10 checkpoint"
    again = train(cfg, shards_root / "train", shards_root / "validation", tmp_path / "crashed")
    assert again["resumed_from"].endswith("step-0000005"), "not from the suspect step-10 checkpoint"
    assert len(again["spike_events"]) == 1  # no new spike
    final = load_file(tmp_path / "crashed" / "model" / "model.safetensors")
    reference = load_file(tmp_path / "uninterrupted" / "model" / "model.safetensors")
    assert all(torch.equal(final[name], reference[name]) for name in reference)


def test_a_spike_in_continued_pretraining_with_added_tokens_and_replay_rolls_back(continued: Continued, tmp_path: Path) -> None:
    # The new shards have two token ids more than the replayed ones; the evidence counts tokens over both.
    cfg = continued.config(max_steps=16, faults=[{"step": 8, "kind": "nan_loss"}], checkpoint={"every_steps": 5, "keep_last": 2})
    result = train(cfg, continued.new / "train", continued.new / "validation", tmp_path)
    (event,) = result["spike_events"]
    assert (event["spike"]["step"], event["rollback_step"], result["steps"]) == (8, 5, 16)
    rows = [json.loads(line) for line in (tmp_path / "spikes" / "evidence-1.jsonl").read_text().splitlines()]
    assert {row["shards"] for row in rows} == {"main", "replay"}
    assert {row["id"].split("-")[0] for row in rows} == {"new", "old"}
    swapped = tiny_config(init={"from_dir": str(continued.base_model)},
                          replay={"shards_dir": str(continued.new / "train"), "share": 0.25})
    with pytest.raises(ValueError, match="pack the replay data with the base model's tokenizer"):
        train(swapped, continued.old / "train", continued.old / "validation", tmp_path / "swapped")

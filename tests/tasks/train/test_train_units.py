"""Pieces of the training stage on their own: schedule, guard, data mix, faults, config, vocabulary, retention."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from models.llama import ModelConfig, build_model
from tasks.train.callbacks import SpikeGuardCallback, StepOutput
from tasks.train.config import FaultConfig, ScheduleConfig, SpikeGuardConfig
from tasks.train.continued import extend_vocab, resolve_model_config
from tasks.train.data import MAIN, REPLAY, TrainData
from tasks.train.engine import deepspeed_config
from tasks.train.faults import FAULTED_MANIFEST, FaultInjector, write_faulted_shards
from tasks.train.loop import train
from tasks.train.schedule import lr_at
from tasks.train.shards import PackedShards
from tasks.train.spike import SpikeGuard
from train_fixtures import VOCAB, Continued, tiny_config, write_shards, write_tokenizer


def test_schedules_warm_up_then_decay_to_the_floor() -> None:
    cosine = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(5, 100, 1.0, cosine) == pytest.approx(0.5)
    assert lr_at(10, 100, 1.0, cosine) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, cosine) == pytest.approx(0.1)
    wsd = ScheduleConfig(kind="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert [lr_at(s, 100, 1.0, wsd) for s in (11, 80)] == [1.0, 1.0]
    assert lr_at(90, 100, 1.0, wsd) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, wsd) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="outside"):
        lr_at(101, 100, 1.0, cosine)


def test_guard_flags_nan_at_once_and_spikes_on_a_falling_curve_but_not_noise() -> None:
    guard = SpikeGuard(SpikeGuardConfig(window=32, warmup_steps=5))
    assert guard.observe(1, float("nan"), 1.0).reason == "non-finite"
    assert guard.observe(1, 3.0, float("inf")).reason == "non-finite"
    rng = np.random.default_rng(0)
    for step in range(1, 200):  # a loss falling from 4 to 2 with noise: never a spike
        loss = 2.0 + 2.0 * math.exp(-step / 30) + rng.normal(0, 0.05)
        assert guard.observe(step, loss, 1.0 + rng.normal(0, 0.02)) is None, f"false spike at step {step}"
    spike = guard.observe(200, 3.0, 1.0)
    assert spike is not None and spike.reason == "loss" and spike.threshold < 3.0
    assert len(guard.losses) == 32 and 3.0 not in guard.losses  # spikes never enter the window
    assert guard.observe(201, 2.0, 5.0) is None  # 5x: an early-training swing, clipped anyway
    grad = guard.observe(202, 2.0, 20.0)
    assert grad is not None and grad.reason == "grad_norm"


def test_guard_waits_for_its_warmup() -> None:
    guard = SpikeGuard(SpikeGuardConfig(window=8, warmup_steps=10))
    for step in range(1, 10):
        assert guard.observe(step, 2.0 + 0.01 * (step % 2), 1.0) is None
    assert guard.observe(10, 20.0, 1.0) is None
    assert guard.observe(11, 20.0, 1.0) is not None


def test_data_mixes_replay_evenly_and_skips_in_mix_numbers(tmp_path: Path) -> None:
    main = PackedShards(write_shards(tmp_path / "main", prefix="new") / "train")
    old = PackedShards(write_shards(tmp_path / "old", train_docs=300, prefix="old") / "train")
    data = TrainData({MAIN: main, REPLAY: old}, replay_share=0.25, batch_size=4, seed=0)
    assert [data.source(i)[0] for i in range(8)] == [MAIN, MAIN, MAIN, REPLAY] * 2
    data.skip(2, 5)  # mix batches 2, 3 (replay #0) and 4
    taken = list(itertools.islice(data, 6))
    assert [index for index, _, _ in taken] == [0, 1, 5, 6, 7, 8]
    assert [source for _, source, _ in taken] == [MAIN, MAIN, MAIN, MAIN, REPLAY, MAIN]
    assert taken[4][2].index == 1  # replay batch 0 was skipped with mix batch 3
    assert all(json.loads(json.dumps(b.doc_index.tolist())) for _, _, b in taken)

    resumed = TrainData({MAIN: main, REPLAY: old}, replay_share=0.25, batch_size=4, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(data.state_dict())))
    for (i, s, a), (j, t, b) in zip(itertools.islice(data, 5), itertools.islice(resumed, 5), strict=True):
        assert (i, s) == (j, t) and torch.equal(a.input_ids, b.input_ids)
    source, whole = data.global_batch(6)
    assert source == MAIN and whole.input_ids.shape[0] == 4


def test_a_data_fault_lives_in_its_batches_and_is_the_same_on_any_number_of_ranks(shards_root: Path) -> None:
    faults = FaultInjector([FaultConfig(step=3, kind="random_batch")], seed=0, vocab_size=VOCAB, batches_per_step=2)
    assert [faults.data_fault(index) for index in range(7)] == [None] * 4 + [0, 0, None]  # step 3's two batches
    _, clean = TrainData({MAIN: PackedShards(shards_root / "train")}, 0.0, batch_size=4, seed=0).global_batch(4)
    whole = faults.batch(4, clean, rank=0, world_size=1)
    assert not torch.equal(whole.input_ids, clean.input_ids)
    assert torch.equal(faults.batch(4, clean, rank=0, world_size=1).input_ids, whole.input_ids)  # a replay meets it again
    for rank in (0, 1):
        share = dataclasses.replace(clean, input_ids=clean.input_ids[rank::2], labels=clean.labels[rank::2])
        assert torch.equal(faults.batch(4, share, rank, world_size=2).labels, whole.labels[rank::2])
    assert faults.batch(6, clean, rank=0, world_size=1) is clean


def test_a_grad_spike_puts_its_value_on_one_gradient_element_and_leaves_the_loss_as_it_was() -> None:
    faults = FaultInjector([FaultConfig(step=2, kind="grad_spike", factor=1e6)], seed=0, vocab_size=VOCAB, batches_per_step=1)
    module = torch.nn.Linear(3, 1, bias=False)
    loss = module(torch.ones(1, 3)).sum()
    spiked = faults.loss(faults.due(2), loss, module)
    assert spiked.item() == loss.item()
    spiked.backward()
    assert module.weight.grad.tolist() == [[1.0 + 1e6, 1.0, 1.0]]
    assert faults.due(3) == [] and faults.loss([], loss, module) is loss


def test_a_repeat_window_overwrites_its_batches_rows_with_one_id_in_a_copy(shards_root: Path, tmp_path: Path) -> None:
    fault = FaultConfig(step=2, steps=2, kind="shard_window", mode="repeat")
    faults = FaultInjector([fault], seed=0, vocab_size=VOCAB, batches_per_step=2)
    assert [faults.data_fault(index) for index in range(7)] == [None] * 2 + [0] * 4 + [None]  # steps 2 and 3
    assert faults.replacement(3) is None  # read from the shards as they are, not replaced in memory
    data = TrainData({MAIN: PackedShards(shards_root / "train")}, 0.0, batch_size=4, seed=0)
    write_faulted_shards([fault], data, seed=0, batches_per_step=2, out_dir=tmp_path / "copy")
    clean, faulted = data.shards[MAIN], PackedShards(tmp_path / "copy" / MAIN)
    rows = sorted({row for index in range(2, 6) for row in data.global_batch(index)[1].rows.tolist()})
    changed = np.flatnonzero((np.asarray(faulted.tokens) != np.asarray(clean.tokens)).any(axis=1))
    assert changed.tolist() == rows
    window = np.asarray(faulted.tokens)[rows][np.asarray(clean.doc_index)[rows] >= 0]
    assert len(np.unique(window)) == 1
    assert np.array_equal(faulted.doc_index, clean.doc_index)  # the documents stay where they were
    (manifest,) = json.loads((tmp_path / "copy" / FAULTED_MANIFEST).read_text())
    assert manifest["rows"] == rows and manifest["shards"] == MAIN


def test_config_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        tiny_config(global_batch_size=12, micro_batch_size=8)
    with pytest.raises(ValueError, match="replay needs both"):
        tiny_config(replay={"shards_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="set init.from_dir"):
        tiny_config(init={"new_tokens": ["x"]})
    clash = tmp_path / "ds.json"
    clash.write_text(json.dumps({"gradient_clipping": 2.0}))
    with pytest.raises(ValueError, match="come from the train config"):
        deepspeed_config(tiny_config(deepspeed_config=str(clash)), world_size=1)
    with pytest.raises(ValueError, match="nproc_per_node=1"):
        deepspeed_config(tiny_config(), world_size=2)
    shards = PackedShards(write_shards(tmp_path / "shards", train_docs=40, val_docs=10) / "train")
    with pytest.raises(ValueError, match="leave vocab_size unset"):
        resolve_model_config(tiny_config(model={"vocab_size": 128}), shards)
    assert resolve_model_config(tiny_config(), shards).vocab_size == VOCAB
    sized = resolve_model_config(tiny_config(target_params=1e5), shards)
    assert sized.vocab_size == VOCAB and sized.d_model != 64


def test_new_tokens_start_as_the_mean_embedding(tmp_path: Path) -> None:
    model = build_model(ModelConfig(vocab_size=VOCAB, d_model=32, n_heads=2, n_kv_heads=2, intermediate_size=64,
                                    tie_embeddings=False))
    tokenizer = AutoTokenizer.from_pretrained(write_tokenizer(tmp_path / "tok"))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = extend_vocab(model, tokenizer, ["<new_a>", "<new_b>"])
    assert ids == [VOCAB, VOCAB + 1] and len(tokenizer) == VOCAB + 2
    new_in = model.get_input_embeddings().weight.detach()
    assert torch.equal(new_in[:VOCAB], old_in)
    assert torch.allclose(new_in[VOCAB], old_in.mean(0)) and torch.allclose(new_in[VOCAB + 1], old_in.mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[VOCAB + 1], old_out.mean(0))
    with pytest.raises(ValueError, match="already in the vocabulary"):
        extend_vocab(model, tokenizer, ["t5"])


def test_continued_pretraining_extends_the_vocabulary_and_replays_old_data(continued: Continued, tmp_path: Path) -> None:
    cfg = continued.config(max_steps=12)
    result = train(cfg, continued.new / "train", continued.new / "validation", tmp_path / "continued")
    assert math.isfinite(result["final_val_loss"]) and result["steps"] == 12
    model = LlamaForCausalLM.from_pretrained(result["model_dir"])
    assert model.config.vocab_size == VOCAB + 2
    assert len(AutoTokenizer.from_pretrained(result["model_dir"])) == VOCAB + 2
    state = json.loads(sorted((tmp_path / "continued" / "checkpoints").glob("ckpt-*/rank-0.json"))[-1].read_text())
    assert state["data"]["loaders"][REPLAY]["cursor"] == 3  # 12 batches, every 4th replayed


def test_retention_keeps_the_newest_known_good_checkpoint(shards_root: Path, tmp_path: Path) -> None:
    train(tiny_config(max_steps=20, checkpoint={"every_steps": 5, "keep_last": 1}), shards_root / "train",
          shards_root / "validation", tmp_path)
    kept = sorted((tmp_path / "checkpoints").glob("ckpt-*"))
    assert [p.name.split("-step-")[1] for p in kept] == ["0000015", "0000020"]
    assert [(p / "known_good").exists() for p in kept] == [True, False]  # step 21 never ran


class _Loop:
    """What SpikeGuardCallback needs of the trainer: it confirms steps and requests rollbacks."""

    def __init__(self) -> None:
        self.confirmed: list[int] = []
        self.spike = None
        self.data_end: int | None = None

    @property
    def rollback_requested(self) -> bool:
        return self.spike is not None

    def confirm(self, step: int) -> None:
        self.confirmed.append(step)

    def request_rollback(self, spike, data_end: int) -> None:
        self.spike = spike
        self.data_end = data_end


def test_guard_reads_one_step_late_on_accelerators_and_still_catches_within_two_steps() -> None:
    loop, guard = _Loop(), SpikeGuardCallback(SpikeGuardConfig(warmup_steps=5), lag=1)

    def step(n: int, loss: float) -> None:  # two mix batches a step
        guard.on_step(loop, StepOutput(n, torch.tensor(loss), torch.tensor(1.0), 1e-3, 256, data_end=2 * n))

    for n in range(1, 11):
        step(n, 2.0)
    assert loop.confirmed == list(range(1, 10))  # step 10 waits for step 11
    step(11, float("nan"))
    assert loop.spike is None  # read one step late
    step(12, 2.0)
    assert loop.spike is not None and loop.spike.step == 11 and loop.spike.reason == "non-finite"
    assert loop.data_end == 22, "the skip margin runs on from the spike step's data, not from the step that saw it"
    assert not guard.pending

    loop2, guard2 = _Loop(), SpikeGuardCallback(SpikeGuardConfig(warmup_steps=5), lag=1)
    guard2.on_step(loop2, StepOutput(1, torch.tensor(2.0), torch.tensor(1.0), 1e-3, 256, data_end=2))
    guard2.flush(loop2)  # before a checkpoint nothing stays unchecked
    assert loop2.confirmed == [1] and not guard2.pending

"""The one-process step: plain PyTorch without a DeepSpeed engine, and train.compile's fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.llama import build_model
from tasks.train.continued import resolve_model_config
from tasks.train.engine import TrainEngine, init_distributed
from tasks.train.loader import PackedLoader
from tasks.train.shards import PackedShards
from train_fixtures import tiny_config


def _engine(shards_root: Path, **fields: object) -> tuple[TrainEngine, PackedLoader]:
    cfg = tiny_config(**fields)
    shards = PackedShards(shards_root / "train")
    engine = TrainEngine(build_model(resolve_model_config(cfg, shards), seed=0), cfg, init_distributed())
    return engine, PackedLoader(shards, cfg.micro_batch_size, seed=0)


def test_one_process_steps_without_deepspeed_and_accumulates(shards_root: Path) -> None:
    engine, loader = _engine(shards_root, global_batch_size=8, micro_batch_size=4)
    assert engine.deepspeed is None
    before = [p.detach().clone() for p in engine.module.parameters()]
    batches = iter(loader)
    loss, _ = engine.loss(next(batches), z_loss=0.0)
    engine.backward(loss)
    assert engine.step() is None  # half the global batch: gradients wait
    assert all(torch.equal(a, b) for a, b in zip(before, engine.module.parameters(), strict=True))
    loss, _ = engine.loss(next(batches), z_loss=0.0)
    engine.backward(loss)
    norm = engine.step()
    assert norm is not None and torch.isfinite(norm)
    assert not any(torch.equal(a, b) for a, b in zip(before, engine.module.parameters(), strict=True))
    assert all(p.grad is None for p in engine.module.parameters())


def test_a_failed_compile_trains_uncompiled(shards_root: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def broken(module: torch.nn.Module):
        def compiled(**inputs: object) -> None:
            raise RuntimeError("no C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    engine, loader = _engine(shards_root, compile=True)
    with caplog.at_level(logging.WARNING, logger="tasks.train.engine"):
        loss, _ = engine.loss(next(iter(loader)), z_loss=0.0)
    assert torch.isfinite(loss)
    assert "torch.compile failed (RuntimeError: no C++ compiler)" in caplog.text
    assert engine.forward is engine.module

"""Faults injected from the config, for tests and demos, of two kinds.

A fault of the data, ``random_batch``, lives in the batches that its step trains in a run
without skips: their tokens become uniform random ids (the document layout, and so the mask
and positions, stay). It is keyed to those mix batch numbers, not to a step, as bad data is:
a rollback that replays the batches meets it again, one that skips them never does, and the
spike guard's evidence sees the tokens that were trained, not the documents they replaced.
The random ids depend on the seed and the batch number only, so every replay, any number of
processes and the evidence all see the same ones.

Faults of the state, ``lr_multiply`` (scale the step's learning rate) and ``nan_loss`` (a NaN
loss), are transient upsets: each fires once, at its step, and is remembered (in checkpoints
and the spike ledger), so replaying its step after a rollback does not inject it again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from models.llama import IGNORE_INDEX
from tasks.train.config import FaultConfig
from tasks.train.loader import Batch

DATA_FAULTS = frozenset({"random_batch"})
INJECTED = "injected"  # the source that evidence names for a batch a data fault replaced


class FaultInjector:
    """The configured faults: which mix batches hold data faults, and which state faults fired."""

    def __init__(self, faults: list[FaultConfig], seed: int, vocab_size: int, batches_per_step: int) -> None:
        self.faults = faults
        self.seed = seed
        self.vocab_size = vocab_size
        # Mix batch number -> the data fault in it; step s trains mix batches [(s-1) A, s A) when nothing is skipped.
        self._in_batch = {
            index: i
            for i, fault in enumerate(faults)
            if fault.kind in DATA_FAULTS
            for index in range((fault.step - 1) * batches_per_step, fault.step * batches_per_step)
        }
        self.fired: set[int] = set()

    def due(self, step: int) -> list[int]:
        """Indices of the state faults that fire at ``step`` (not fired before)."""
        return [
            i for i, f in enumerate(self.faults) if f.kind not in DATA_FAULTS and f.step == step and i not in self.fired
        ]

    def data_fault(self, index: int) -> int | None:
        """Index of the data fault in mix batch ``index``, if any."""
        return self._in_batch.get(index)

    def describe(self, indices: list[int]) -> str:
        """The kinds of faults ``indices``, for the spike ledger."""
        return ", ".join(self.faults[i].kind for i in indices)

    def record(self, fault: int) -> dict[str, Any]:
        """Fault ``fault`` in the shape of a document record (id, source, meta), for the spike evidence."""
        config = self.faults[fault]
        return {"id": f"fault-{fault}-{config.kind}-step-{config.step}", "source": INJECTED, "meta": config.model_dump()}

    def lr_factor(self, due: list[int]) -> float:
        return math.prod(self.faults[i].factor for i in due if self.faults[i].kind == "lr_multiply")

    def batch(self, index: int, batch: Batch, rank: int, world_size: int) -> Batch:
        """Mix batch ``index`` as training sees it. ``batch`` holds rank ``rank``'s rows of it (of
        ``world_size`` ranks; rank 0 of 1 for the whole batch); a data fault replaces its tokens."""
        if self.data_fault(index) is None:
            return batch
        rows, seq_len = batch.input_ids.shape
        entropy = np.random.SeedSequence([self.seed, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        # Drawn for the whole global batch, then dealt out like the loader deals its rows.
        ids = torch.randint(0, self.vocab_size, (rows * world_size, seq_len), generator=generator)[rank::world_size]
        # Targets follow the random ids where the batch had targets, so the loss measures them.
        labels = torch.full_like(batch.labels, IGNORE_INDEX)
        labels[:, :-1] = torch.where(batch.labels[:, :-1] != IGNORE_INDEX, ids[:, 1:], IGNORE_INDEX)
        return dataclasses.replace(batch, input_ids=ids, labels=labels)

    def loss(self, due: list[int], loss: torch.Tensor) -> torch.Tensor:
        if any(self.faults[i].kind == "nan_loss" for i in due):
            return loss * float("nan")
        return loss

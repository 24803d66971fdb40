"""Faults injected from the config, for tests and demos: each fires once, at its step.

``random_batch`` replaces the step's tokens with uniform random ids (the document layout,
and so the mask and positions, stay), ``lr_multiply`` scales that step's learning rate and
``nan_loss`` makes the loss NaN. A fault that fired is remembered (in checkpoints and the
spike ledger), so replaying its step after a rollback does not inject it again.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from models.llama import IGNORE_INDEX
from tasks.tokenizer.loader import Batch
from tasks.train.config import FaultConfig


class FaultInjector:
    """The configured faults and which of them fired."""

    def __init__(self, faults: list[FaultConfig], seed: int, rank: int, vocab_size: int) -> None:
        self.faults = faults
        self.seed = seed
        self.rank = rank
        self.vocab_size = vocab_size
        self.fired: set[int] = set()

    def due(self, step: int) -> list[int]:
        """Indices of the faults that fire at ``step`` (not fired before)."""
        return [i for i, f in enumerate(self.faults) if f.step == step and i not in self.fired]

    def describe(self, indices: list[int]) -> str | None:
        return ", ".join(self.faults[i].kind for i in indices) or None

    def lr_factor(self, due: list[int]) -> float:
        return math.prod(self.faults[i].factor for i in due if self.faults[i].kind == "lr_multiply")

    def batch(self, due: list[int], step: int, micro: int, batch: Batch) -> Batch:
        if not any(self.faults[i].kind == "random_batch" for i in due):
            return batch
        entropy = np.random.SeedSequence([self.seed, step, micro, self.rank]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        ids = torch.randint(0, self.vocab_size, batch.input_ids.shape, generator=generator)
        # Targets follow the random ids where the batch had targets, so the loss measures them.
        labels = torch.full_like(batch.labels, IGNORE_INDEX)
        labels[:, :-1] = torch.where(batch.labels[:, :-1] != IGNORE_INDEX, ids[:, 1:], IGNORE_INDEX)
        return dataclasses.replace(batch, input_ids=ids, labels=labels)

    def loss(self, due: list[int], loss: torch.Tensor) -> torch.Tensor:
        if any(self.faults[i].kind == "nan_loss" for i in due):
            return loss * float("nan")
        return loss

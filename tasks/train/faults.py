"""Faults injected from the config, for tests and demos, of two kinds.

Faults of the data live in the batches that steps ``[step, step + steps)`` train in a run
without skips, keyed to those mix batch numbers, not to a step, as bad data is: a rollback
that replays the batches meets them again, one that skips them never does.

- ``random_batch`` replaces the batches' tokens in memory with uniform random ids (the
  document layout, and so the mask and positions, stay). The spike guard's evidence sees the
  tokens that were trained, not the documents they replaced. The random ids depend on the
  seed and the batch number only, so every replay, any number of processes and the evidence
  all see the same ones.
- ``shard_window`` is a spike that lives in the data, as real ones do: before training,
  ``write_faulted_shards`` copies the shards into the run directory (the stage's artifact is
  never touched) and overwrites, in the copy, the shard rows those batches are cut from, with
  garbage ids or one id repeated. Training reads the copy, so the corruption is the
  documents' own content, and the evidence names those documents.

Faults of the state, ``lr_multiply`` (scale the step's learning rate), ``nan_loss`` (a NaN
loss) and ``grad_spike`` (one huge gradient element, as a bit flip leaves), are transient
upsets: each fires once, at its step, and is remembered (in checkpoints and the spike
ledger), so replaying its step after a rollback does not inject it again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.llama import IGNORE_INDEX
from tasks.tokenizer.shards import DOC_INDEX, DOC_INDEX_DTYPE, TOKEN_DTYPE, TOKENS
from tasks.train.config import FaultConfig
from tasks.train.data import TrainData
from tasks.train.loader import Batch

DATA_FAULTS = frozenset({"random_batch", "shard_window"})
INJECTED = "injected"  # the source that evidence names for a batch a data fault replaced
FAULTED_SHARDS_DIR = "faulted-shards"  # in the run directory: the copy of the shards that shard faults corrupted
FAULTED_MANIFEST = "faults.json"  # in that copy: which rows and documents each shard fault overwrote


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
            for index in fault_batches(fault, batches_per_step)
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

    def replacement(self, index: int) -> int | None:
        """Index of the fault that replaces mix batch ``index`` in memory (``random_batch``), if any;
        a ``shard_window`` batch is read from the corrupted shards as it is."""
        fault = self._in_batch.get(index)
        return fault if fault is not None and self.faults[fault].kind == "random_batch" else None

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
        ``world_size`` ranks; rank 0 of 1 for the whole batch); a ``random_batch`` fault replaces its tokens."""
        if self.replacement(index) is None:
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

    def loss(self, due: list[int], loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        """The loss to back-propagate: NaN for ``nan_loss``; for ``grad_spike``, the same value whose
        gradient has ``factor`` more on the first element of ``module``'s first parameter (ZeRO-3
        partitions parameters: not there)."""
        if any(self.faults[i].kind == "nan_loss" for i in due):
            return loss * float("nan")
        for i in due:
            if self.faults[i].kind == "grad_spike":
                element = next(module.parameters()).view(-1)[0]
                loss = loss + self.faults[i].factor * (element - element.detach())
        return loss


def fault_batches(fault: FaultConfig, batches_per_step: int) -> range:
    """Mix batch numbers of data fault ``fault``: those of its steps in a run that skips none."""
    return range((fault.step - 1) * batches_per_step, (fault.step - 1 + fault.steps) * batches_per_step)


def write_faulted_shards(faults: list[FaultConfig], data: TrainData, seed: int, batches_per_step: int, out_dir: Path) -> None:
    """Copy every source of ``data`` to ``out_dir/<source>`` and overwrite, in the copy, the rows of
    the mix batches of each ``shard_window`` fault; ``out_dir/faults.json`` lists the rows and
    documents overwritten.

    Idempotent: a copy already there is kept (a resumed run, whose config hash, faults included,
    the checkpoints check). Fault ``i`` draws its ids from ``SeedSequence([seed, i])``.
    """
    if (out_dir / FAULTED_MANIFEST).exists():
        return
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, shards in data.shards.items():
        shutil.copytree(shards.directory, tmp / name)
    manifest = []
    for i, fault in enumerate(faults):
        if fault.kind != "shard_window":
            continue
        rows: dict[str, set[int]] = {}
        for index in fault_batches(fault, batches_per_step):
            name, batch = data.global_batch(index)
            rows.setdefault(name, set()).update(batch.rows.tolist())
        generator = np.random.default_rng(np.random.SeedSequence([seed, i]))
        for name, overwritten in sorted(rows.items()):
            shards = data.shards[name]
            where = np.asarray(sorted(overwritten))
            shape = (len(shards), shards.seq_len)
            tokens = np.memmap(tmp / name / TOKENS, dtype=TOKEN_DTYPE, mode="r+", shape=shape)
            docs = np.memmap(tmp / name / DOC_INDEX, dtype=DOC_INDEX_DTYPE, mode="r", shape=shape)[where]  # (R, T)
            real = docs >= 0
            vocab_size = shards.index["vocab_size"]
            if fault.mode == "garbage":
                ids = generator.integers(0, vocab_size, size=docs.shape)
            else:
                ids = np.full(docs.shape, generator.integers(0, vocab_size))
            tokens[where] = np.where(real, ids, tokens[where]).astype(TOKEN_DTYPE)
            tokens.flush()
            del tokens  # unmapped before the copy is renamed into place
            documents = [shards.docs[row]["id"] for row in np.unique(docs[real]).tolist()]
            manifest.append({**fault.model_dump(), "fault": i, "shards": name, "rows": where.tolist(), "documents": documents})
    (tmp / FAULTED_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)

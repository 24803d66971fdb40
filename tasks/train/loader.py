"""A deterministic, resumable sampler over packed shards that keeps documents apart.

Order: epoch ``e`` visits the rows in the permutation drawn by
``numpy.random.Generator(PCG64([seed, e]))`` (rows in stored order when ``shuffle`` is off).
Global batch ``i`` of an epoch is rows ``[i * G, (i + 1) * G)`` of that order, with
``G = batch_size * world_size``; rank ``r`` takes every ``world_size``-th of them starting at
``r``. So one process with batch ``2B`` and two with ``B`` each see the same global batches,
and every global batch has a number (``epoch * batches_per_epoch + i``) that all ranks agree
on, which is what ``skip`` and the spike guard's evidence refer to.

Each batch carries what the model needs so that attention is causal *and* block-diagonal per
document: position ids that restart at every document, each token's document (from which
``model_inputs`` makes what the model's kernel takes: a block-sparse ``BlockMask``, where each
document lies for the varlen kernel, or a boolean (B, 1, T, T) mask only for the dense
kernels), and labels that never ask a document's
first token to be predicted from the document before it. Everything is derived from the
shards' ``doc_index`` with array operations, no token loops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from models.llama import (
    BLOCK_MASK_KERNELS,
    IGNORE_INDEX,
    VARLEN_KERNEL,
    attention_mask_for,
    document_block_mask,
    document_segments,
)
from tasks.train.shards import PackedShards


@dataclass
class LoaderState:
    """Where the loader stands; with the skip list it is all a resume needs."""

    seed: int
    epoch: int
    cursor: int  # batches of this epoch already consumed (yielded or skipped)


@dataclass
class Batch:
    """One rank's share of a global batch.

    ``labels`` are aligned with the positions (``labels[:, t]`` is the target of position t),
    so pass them to ``models.llama.causal_lm_loss``, not to the HF model's ``labels=``.
    ``doc_index`` and ``rows`` stay in numpy: they are evidence for reports, not model input.
    """

    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where nothing is to be predicted
    position_ids: torch.Tensor  # (B, T) long, 0 at every document start and at row start
    doc_index: np.ndarray  # (B, T) int64, row of shards.docs per token, -1 for padding
    rows: np.ndarray  # (B,) int64, shard rows this batch was cut from
    index: int  # global batch number: epoch * batches_per_epoch + position in the epoch
    epoch: int

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool, True where query t may attend to key s: made on demand, it grows with T^2."""
        return torch.from_numpy(document_mask(self.doc_index))

    def model_inputs(
        self,
        attn_implementation: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for the model's forward, the mask in the form the kernel honours:
        a block-sparse ``BlockMask`` for FlexAttention (made on the host, where reading the
        document ids costs no sync, then moved), where each document lies for the varlen
        kernel (no mask), else the dense mask."""
        inputs: dict[str, Any] = {
            "input_ids": self.input_ids.to(device, non_blocking=True),
            "position_ids": self.position_ids.to(device, non_blocking=True),
        }
        if attn_implementation == VARLEN_KERNEL:
            return {**inputs, "document_segments": document_segments(self.doc_index).to(device)}
        if attn_implementation in BLOCK_MASK_KERNELS:
            mask = document_block_mask(torch.from_numpy(self.doc_index)).to(device or "cpu")
        else:
            mask = attention_mask_for(self.attention_mask.to(device, non_blocking=True), attn_implementation, dtype)
        return {**inputs, "attention_mask": mask}


def document_mask(doc_index: np.ndarray) -> np.ndarray:
    """The dense document mask (B, 1, T, T) of packed rows: causal AND same document."""
    seq_len = doc_index.shape[1]
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))  # (T, T)
    # Padding (-1) attends only to padding, so no query row is fully masked (sdpa would NaN).
    return ((doc_index[:, :, None] == doc_index[:, None, :]) & causal)[:, None]


def document_inputs(tokens: np.ndarray, doc_index: np.ndarray, dense_mask: bool = True) -> dict[str, np.ndarray]:
    """Labels, position ids and (with ``dense_mask``) the dense document mask of packed rows (B, T).

    A label is the next token when it belongs to the same document, else ``IGNORE_INDEX``
    (the boundary token is not asked for the next document's first token; padding and each
    row's last position, whose successor is in another row, predict nothing).
    """
    if tokens.shape != doc_index.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tokens.shape} and doc_index {doc_index.shape} must both be (B, T)")
    batch, seq_len = tokens.shape
    same_doc_next = (doc_index[:, 1:] == doc_index[:, :-1]) & (doc_index[:, 1:] >= 0)  # (B, T-1)
    labels = np.full((batch, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[:, :-1] = np.where(same_doc_next, tokens[:, 1:], IGNORE_INDEX)

    t = np.arange(seq_len)
    starts = np.ones((batch, seq_len), dtype=bool)
    starts[:, 1:] = doc_index[:, 1:] != doc_index[:, :-1]
    last_start = np.maximum.accumulate(np.where(starts, t, 0), axis=1)  # (B, T)
    position_ids = t - last_start
    derived = {"labels": labels, "position_ids": position_ids}
    return {**derived, "attention_mask": document_mask(doc_index)} if dense_mask else derived


class PackedLoader:
    """Iterates global batches over epochs forever; training decides when to stop.

    ``state_dict()`` after consuming k batches, loaded into a fresh loader, yields exactly the
    batches the first would have yielded next. ``skip(start, stop)`` drops global batches by
    number and is part of the state, so a resume skips them too. When rolling back, call
    ``load_state_dict`` first and ``skip`` after: loading replaces the skip list. Iterators
    share the loader's state, so use one at a time.
    """

    def __init__(
        self,
        shards: PackedShards,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.shards = shards
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.global_batch_size = batch_size * world_size
        rows = len(shards)
        if drop_last and rows < self.global_batch_size:
            raise ValueError(
                f"{shards.directory} has {rows} sequences, fewer than one global batch "
                f"({batch_size} x {world_size} ranks): lower the batch size or add data"
            )
        remainder = rows % self.global_batch_size
        if not drop_last and 0 < remainder < world_size:
            raise ValueError(
                f"the last batch of each epoch would have {remainder} sequences for {world_size} ranks, "
                "leaving a rank empty: set drop_last=True"
            )
        self.state = LoaderState(seed=seed, epoch=0, cursor=0)
        self._skips: list[tuple[int, int]] = []
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @property
    def batches_per_epoch(self) -> int:
        full, remainder = divmod(len(self.shards), self.global_batch_size)
        return full + (1 if remainder and not self.drop_last else 0)

    def skip(self, start: int, stop: int) -> None:
        """Never yield global batches ``start <= index < stop``."""
        if not 0 <= start < stop:
            raise ValueError(f"skip range [{start}, {stop}) must satisfy 0 <= start < stop")
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted([*self._skips, (start, stop)]):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._skips = merged

    @property
    def skips(self) -> list[tuple[int, int]]:
        """Skipped global batch ranges, merged and sorted."""
        return list(self._skips)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state: position, skip list and what a resume must agree with."""
        return {
            **asdict(self.state),
            "skips": [list(r) for r in self._skips],
            "global_batch_size": self.global_batch_size,
            "num_sequences": len(self.shards),
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state taken with another order of batches."""
        mine = self.state_dict()
        for key in ("seed", "global_batch_size", "num_sequences", "shuffle", "drop_last"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has {mine[key]!r}: "
                    "resume with the configuration and shards the state was saved with"
                )
        self.state = LoaderState(seed=state["seed"], epoch=state["epoch"], cursor=state["cursor"])
        self._skips = [(int(lo), int(hi)) for lo, hi in state["skips"]]

    def __iter__(self) -> Iterator[Batch]:
        per_epoch = self.batches_per_epoch
        while True:
            if self.state.cursor >= per_epoch:
                self.state = LoaderState(self.state.seed, self.state.epoch + 1, 0)
            index = self.state.epoch * per_epoch + self.state.cursor
            skipped_to = next((hi for lo, hi in self._skips if lo <= index < hi), None)
            if skipped_to is not None:
                self.state = LoaderState(self.state.seed, *divmod(skipped_to, per_epoch))
                continue
            epoch, position = self.state.epoch, self.state.cursor
            # Advance before yielding: a state saved after this batch is trained resumes past it.
            self.state = LoaderState(self.state.seed, epoch, position + 1)
            yield self._batch(epoch, position, index)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rows = len(self.shards)
            if self.shuffle:
                # [seed, epoch] through SeedSequence, not seed + epoch, so that seed s's
                # epoch 1 is not seed s+1's epoch 0.
                rng = np.random.Generator(np.random.PCG64([self.state.seed, epoch]))
                self._order = rng.permutation(rows)
            else:
                self._order = np.arange(rows)
            self._order_epoch = epoch
        return self._order

    def _batch(self, epoch: int, position: int, index: int) -> Batch:
        order = self._epoch_order(epoch)
        global_rows = order[position * self.global_batch_size : (position + 1) * self.global_batch_size]
        rows = global_rows[self.rank :: self.world_size]
        tokens = self.shards.tokens[rows].astype(np.int64)  # (B, T)
        doc_index = self.shards.doc_index[rows].astype(np.int64)  # (B, T)
        derived = document_inputs(tokens, doc_index, dense_mask=False)
        return Batch(
            input_ids=torch.from_numpy(tokens),
            labels=torch.from_numpy(derived["labels"]),
            position_ids=torch.from_numpy(derived["position_ids"]),
            doc_index=doc_index,
            rows=rows,
            index=index,
            epoch=epoch,
        )

"""The training stream: the packed training shards, optionally mixed with replayed old data.

Batches are numbered in the mix (``index``); with a replay share ``s``, mix batch ``m`` comes
from the replay shards exactly when ``floor((m + 1) s) > floor(m s)``, so the mix is spread
evenly, needs no random state and maps every mix number to one batch number of one source.
That mapping lets ``skip`` and the spike guard's evidence speak in mix numbers while each
source's ``PackedLoader`` keeps its own order and state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from tasks.train.loader import Batch, PackedLoader
from tasks.train.shards import PackedShards

MAIN = "main"
REPLAY = "replay"


class TrainData:
    """Mix batches of ``main`` and ``replay`` shards by a fixed share; state and skips in mix numbers."""

    def __init__(
        self,
        shards: dict[str, PackedShards],
        replay_share: float,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if (REPLAY in shards) != (replay_share > 0):
            raise ValueError("a replay share needs replay shards, and replay shards need a share > 0")
        seq_lens = {name: s.seq_len for name, s in shards.items()}
        if len(set(seq_lens.values())) != 1:
            raise ValueError(f"replay and training shards must have one seq_len, got {seq_lens}: repack one of them")
        self.shards = shards
        self.share = Fraction(replay_share).limit_denominator(1000)
        self.batch_size = batch_size
        self.seed = seed
        self.loaders = {
            name: PackedLoader(s, batch_size, seed, rank=rank, world_size=world_size) for name, s in shards.items()
        }
        self.position = 0  # next mix number
        self._skips: list[tuple[int, int]] = []
        self._iters = {name: iter(loader) for name, loader in self.loaders.items()}
        self._whole: dict[str, PackedLoader] = {}

    @property
    def seq_len(self) -> int:
        return next(iter(self.shards.values())).seq_len

    def _replayed_before(self, index: int) -> int:
        """How many of the mix batches ``[0, index)`` come from the replay shards."""
        return math.floor(index * self.share)

    def source(self, index: int) -> tuple[str, int]:
        """``(source, that source's batch number)`` of mix batch ``index``."""
        replayed = self._replayed_before(index)
        if self._replayed_before(index + 1) > replayed:
            return REPLAY, replayed
        return MAIN, index - replayed

    def skip(self, start: int, stop: int) -> None:
        """Never train on mix batches ``start <= index < stop``."""
        if not 0 <= start < stop:
            raise ValueError(f"skip range [{start}, {stop}) must satisfy 0 <= start < stop")
        self._skips = merge_ranges([*self._skips, (start, stop)])
        replay_lo, replay_hi = self._replayed_before(start), self._replayed_before(stop)
        ranges = {MAIN: (start - replay_lo, stop - replay_hi), REPLAY: (replay_lo, replay_hi)}
        for name, (lo, hi) in ranges.items():
            if hi > lo:
                self.loaders[name].skip(lo, hi)

    @property
    def skips(self) -> list[tuple[int, int]]:
        return list(self._skips)

    def skipped(self, index: int) -> bool:
        return any(lo <= index < hi for lo, hi in self._skips)

    def __iter__(self) -> Iterator[tuple[int, str, Batch]]:
        """``(mix number, source, batch)`` forever."""
        while True:
            index = self.position
            self.position += 1
            if self.skipped(index):
                continue  # the source loader skips the same batch through its own skip list
            name, number = self.source(index)
            batch = next(self._iters[name])
            assert batch.index == number, f"{name} loader at batch {batch.index}, mix expects {number}"
            yield index, name, batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "skips": [list(r) for r in self._skips],
            "share": str(self.share),
            "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if Fraction(state["share"]) != self.share or state["loaders"].keys() != self.loaders.keys():
            raise ValueError(
                f"data state mixes {sorted(state['loaders'])} at share {state['share']}, this run "
                f"{sorted(self.loaders)} at {self.share}: resume with the replay settings it was saved with"
            )
        self.position = state["position"]
        self._skips = [(int(lo), int(hi)) for lo, hi in state["skips"]]
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][name])
        self._iters = {name: iter(loader) for name, loader in self.loaders.items()}

    def global_batch(self, index: int) -> tuple[str, Batch]:
        """Every rank's rows of mix batch ``index`` at once (for evidence; rank 0 alone can call it)."""
        name, number = self.source(index)
        if name not in self._whole:
            # One per source, kept: it caches its epoch's permutation, which is costly on big shards.
            self._whole[name] = PackedLoader(self.shards[name], self.loaders[name].global_batch_size, self.seed)
        whole = self._whole[name]
        epoch, cursor = divmod(number, whole.batches_per_epoch)
        whole.load_state_dict({**whole.state_dict(), "epoch": epoch, "cursor": cursor, "skips": []})
        return name, next(iter(whole))


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching ``[lo, hi)`` ranges merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def token_counts(shards: PackedShards, vocab_size: int, chunk_rows: int = 1 << 14) -> np.ndarray:
    """How often each of ``vocab_size`` token ids occurs in ``shards`` (padding excluded), read in chunks.

    ``vocab_size`` is the model's: shards of one run may use fewer ids than it (replayed data
    packed before continued pretraining added tokens), and counts of all of them add up.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(shards), chunk_rows):
        tokens = shards.tokens[start : start + chunk_rows]
        real = shards.doc_index[start : start + chunk_rows] >= 0
        counts += np.bincount(tokens[real].astype(np.int64), minlength=vocab_size)
    return counts

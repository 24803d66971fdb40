"""Loss-spike detection, the record of each rollback, and the evidence a data team needs.

A step is a spike when its loss or gradient norm is NaN or Inf (at once, from step 1), or,
after ``warmup_steps``, when it exceeds both ``median + k * sigma`` and a relative floor
(``median * (1 + min_rel_jump)`` for the loss, ``median * grad_norm_min_ratio`` for the
gradient norm) of the trailing window of clean steps. ``sigma`` is 1.4826 x the MAD of the
window's step-to-step differences over sqrt(2): a robust noise scale that a falling loss
curve does not inflate (a plain MAD over a window spanning the early descent would hide a
doubled loss). Spikes never enter the window. What happens on a spike (rollback, skip,
learning-rate cut) is the trainer's job; this module decides and describes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tasks.train.config import SpikeGuardConfig
from tasks.train.data import TrainData, token_counts
from tasks.train.faults import INJECTED, FaultInjector

# MAD x 1.4826 estimates the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
MIN_WINDOW = 4


@dataclass
class Spike:
    """What the guard saw at one step."""

    step: int
    reason: str  # "non-finite", "loss" or "grad_norm"
    loss: float
    grad_norm: float
    threshold: float | None  # of the metric named by reason; None for non-finite


@dataclass
class SpikeEvent:
    """One rollback: the spike, where training went back to, what it skipped, what it changed."""

    attempt: int
    spike: Spike
    detected_at_step: int
    rollback_checkpoint: str
    rollback_step: int
    skipped: tuple[int, int]  # mix batch numbers [start, stop)
    lr_scale: float
    lr_scale_until_step: int
    fault: str | None = None  # the injected fault that fired at the spike's step, if any
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def batches_skipped(self) -> int:
        return self.skipped[1] - self.skipped[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": list(self.skipped), "batches_skipped": self.batches_skipped}

    def summary(self) -> str:
        """One line for logs and reports."""
        spike = self.spike
        value = spike.grad_norm if spike.reason == "grad_norm" else spike.loss
        bar = f" > threshold {spike.threshold:.4g}" if spike.threshold is not None else ""
        fault = f" (injected {self.fault})" if self.fault else ""
        return (
            f"attempt {self.attempt}: step {spike.step} {spike.reason} {value:.4g}{bar}{fault}; "
            f"rolled back to step {self.rollback_step} ({self.rollback_checkpoint}), skipped batches "
            f"[{self.skipped[0]}, {self.skipped[1]}), lr x{self.lr_scale} until step {self.lr_scale_until_step}"
        )


class RetryBudgetExhausted(RuntimeError):
    """More spikes than ``spike_guard.max_retries`` rollbacks; the message reports every attempt."""

    def __init__(self, events: list[dict[str, Any]], last: Spike, max_retries: int) -> None:
        self.events = events
        self.last = last
        lines = [f"spike guard: retry budget of {max_retries} rollbacks exhausted"]
        lines += [f"- {event['summary']}" for event in events]
        value = last.grad_norm if last.reason == "grad_norm" else last.loss
        lines.append(f"- final spike at step {last.step}: {last.reason} {value:.4g}, no retries left")
        lines.append(
            "Look at the evidence of each attempt (documents and rare-token share of the skipped windows); "
            "lower the learning rate, raise spike_guard.max_retries or fix the data, then rerun."
        )
        super().__init__("\n".join(lines))


class SpikeGuard:
    """Trailing windows of clean losses and gradient norms, and the test against them."""

    def __init__(self, cfg: SpikeGuardConfig) -> None:
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.grad_norms: deque[float] = deque(maxlen=cfg.window)

    def threshold(self, window: deque[float], min_ratio: float) -> float | None:
        if len(window) < MIN_WINDOW:
            return None
        values = np.asarray(window)
        median = float(np.median(values))
        steps = np.diff(values)
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(steps - np.median(steps)))) / math.sqrt(2)
        return max(median + self.cfg.k * sigma, median * min_ratio)

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        """A ``Spike`` if step ``step`` is one; otherwise the values join the windows."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return Spike(step, "non-finite", loss, grad_norm, None)
        if step > self.cfg.warmup_steps:
            watched = [("loss", loss, self.losses, 1 + self.cfg.min_rel_jump)]
            if self.cfg.watch_grad_norm:
                watched.append(("grad_norm", grad_norm, self.grad_norms, self.cfg.grad_norm_min_ratio))
            for reason, value, window, min_ratio in watched:
                bar = self.threshold(window, min_ratio)
                if bar is not None and value > bar:
                    return Spike(step, reason, loss, grad_norm, bar)
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.cfg.window)
        self.grad_norms = deque(state["grad_norms"], maxlen=self.cfg.window)


def rare_token_mask(data: TrainData, rare_k: int, vocab_size: int) -> tuple[np.ndarray, float]:
    """Which of the model's ``vocab_size`` tokens were seen fewer than ``rare_k`` times in all
    training shards, and the share of those tokens in the shards."""
    counts = sum(token_counts(shards, vocab_size) for shards in data.shards.values())
    rare = counts < rare_k
    total = int(counts.sum())
    return rare, float(counts[rare].sum() / total) if total else 0.0


def window_evidence(
    data: TrainData,
    faults: FaultInjector,
    start: int,
    stop: int,
    rare: np.ndarray,
    baseline_rare_share: float,
    top: int = 20,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Summary and per-document rows for mix batches ``[start, stop)`` not skipped before.

    Per document: its record from ``docs.jsonl`` (id, source, the data stage's statistics),
    the tokens it has in the window and their rare-token share. A batch an injected data
    fault replaced counts as what was trained: one row for the fault (source ``injected``),
    none for the documents whose places its tokens took. The summary names the sources, the
    window's rare-token share against the corpus's, and the ``top`` documents with the
    highest rare-token share.
    """
    per_doc: dict[tuple[str, int], list[int]] = {}  # (shard source or INJECTED, doc row or fault) -> [tokens, rare tokens]
    batches = sequences = tokens = rare_tokens = 0
    for index in range(start, stop):
        if data.skipped(index):
            continue
        source, batch = data.global_batch(index)
        docs = batch.doc_index  # (G, T)
        real = docs >= 0
        if (fault := faults.replacement(index)) is not None:
            source, batch = INJECTED, faults.batch(index, batch, rank=0, world_size=1)
            docs = np.where(real, fault, -1)
        ids = batch.input_ids.numpy()  # (G, T)
        is_rare = rare[ids] & real
        doc_rows, inverse = np.unique(docs[real], return_inverse=True)
        doc_tokens = np.bincount(inverse)
        doc_rare = np.bincount(inverse, weights=is_rare[real]).astype(np.int64)
        for row, n, r in zip(doc_rows.tolist(), doc_tokens.tolist(), doc_rare.tolist(), strict=True):
            entry = per_doc.setdefault((source, row), [0, 0])
            entry[0] += n
            entry[1] += r
        batches += 1
        sequences += ids.shape[0]
        tokens += int(real.sum())
        rare_tokens += int(is_rare.sum())
    rows = []
    for (source, row), (n, r) in per_doc.items():
        record = faults.record(row) if source == INJECTED else data.shards[source].docs[row]
        rows.append({**record, "shards": source, "tokens_in_window": n, "rare_token_share": r / n if n else 0.0})
    rows.sort(key=lambda d: (-d["rare_token_share"], -d["tokens_in_window"], d["id"]))
    by_source: dict[str, int] = {}
    for row in rows:
        by_source[row["source"]] = by_source.get(row["source"], 0) + 1
    summary = {
        "batches": batches,
        "sequences": sequences,
        "tokens": tokens,
        "documents": len(rows),
        "documents_by_source": dict(sorted(by_source.items())),
        "rare_token_share": rare_tokens / tokens if tokens else 0.0,
        "corpus_rare_token_share": baseline_rare_share,
        "top_documents": rows[:top],
    }
    return summary, rows

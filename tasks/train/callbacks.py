"""Training callbacks (OLMo-core style): each owns its state and reacts to the loop's hooks.

The loop (``tasks.train.loop.Trainer``) only steps; the spike guard, checkpoints, evaluation,
throughput, the metrics file, MLflow and the loss-curve plot are callbacks. Sinks (metrics
file, MLflow, plot) run on rank 0 only; the rest run on every rank because they take part
in collectives (evaluation, checkpoints) or in decisions every rank must agree on (spikes).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ladder.tags import PEAK_TFLOPS, SPIKE_PREFIX
from tasks.train.config import SpikeGuardConfig
from tasks.train.perf import machine_peak, mfu
from tasks.train.spike import SpikeEvent, SpikeGuard

if TYPE_CHECKING:
    from tasks.train.loop import Trainer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


@dataclass
class StepOutput:
    """One optimizer step; loss and grad_norm stay on the device until someone reads them."""

    step: int
    loss: torch.Tensor  # () mean over micro-batches and ranks
    grad_norm: torch.Tensor  # () global, before clipping
    lr: float
    tokens: int  # sequence positions processed by all ranks
    data_end: int  # mix number after the step's last batch (where its data ends)


class Callback:
    """Hooks of the training loop; the defaults do nothing."""

    name = "callback"

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, out: StepOutput) -> None: ...

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None: ...

    def on_end(self, trainer: Trainer, result: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release threads and files; runs on success and failure alike."""

    def state_dict(self) -> dict[str, Any] | None:
        """State a checkpoint must keep, or None."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SpikeGuardCallback(Callback):
    """Reads each step's loss and grad norm and asks the trainer to roll back on a spike.

    On an accelerator it reads step t's values after step t+1 has been queued (``lag=1``), so
    the host never waits for the device in the hot path; a spike is still caught within 2
    steps. ``flush`` reads everything pending; the trainer calls it before a checkpoint, so
    no checkpoint is written after an unchecked step.
    """

    name = "spike_guard"

    def __init__(self, cfg: SpikeGuardConfig, lag: int) -> None:
        self.guard = SpikeGuard(cfg)
        self.lag = lag
        self.pending: deque[StepOutput] = deque()

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        self.pending.append(out)
        while len(self.pending) > self.lag and not trainer.rollback_requested:
            self._check(trainer, self.pending.popleft())

    def flush(self, trainer: Trainer) -> None:
        while self.pending and not trainer.rollback_requested:
            self._check(trainer, self.pending.popleft())

    def _check(self, trainer: Trainer, out: StepOutput) -> None:
        spike = self.guard.observe(out.step, float(out.loss), float(out.grad_norm))
        if spike is None:
            trainer.confirm(out.step)
        else:
            self.pending.clear()
            trainer.request_rollback(spike, out.data_end)

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None:
        self.pending.clear()

    def state_dict(self) -> dict[str, Any]:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.guard.load_state_dict(state)


class CheckpointCallback(Callback):
    """Saves every ``every_steps`` steps and at each of ``keep_steps`` (the trainer flushes the spike guard first)."""

    name = "checkpoint"

    def __init__(self, every_steps: int, keep_steps: Collection[int] = ()) -> None:
        self.every_steps = every_steps
        self.keep_steps = frozenset(keep_steps)

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.step % self.every_steps == 0 or out.step in self.keep_steps:
            trainer.save_checkpoint()


class EvalCallback(Callback):
    """Validation loss every ``every_steps`` steps (the final one is the trainer's)."""

    name = "eval"

    def __init__(self, every_steps: int) -> None:
        self.every_steps = every_steps

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.step % self.every_steps == 0 and out.step < trainer.total_steps:
            trainer.log(out.step, {"val_loss": trainer.evaluate()})


class SpeedMonitor(Callback):
    """Loss, lr, grad norm, tokens/s and MFU every ``log_every`` steps (the only host syncs it makes)."""

    name = "speed"

    def __init__(self, log_every: int, flops_per_token: float, peak_tflops: float | None) -> None:
        self.log_every = log_every
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_tflops * 1e12 if peak_tflops else None
        self.tokens = 0
        self.started = 0.0

    def on_start(self, trainer: Trainer) -> None:
        if self.peak_flops is None:
            dtype = torch.bfloat16 if trainer.cfg.precision == "bf16" else torch.float32
            self.peak_flops = machine_peak(dtype, trainer.dist.device)
        trainer.peak_flops = self.peak_flops
        self._restart()

    def _restart(self) -> None:
        self.tokens = 0
        self.started = time.perf_counter()

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        self.tokens += out.tokens
        if out.step % self.log_every and out.step != trainer.total_steps:
            return
        if trainer.dist.device.type == "cuda":
            torch.cuda.synchronize(trainer.dist.device)
        tokens_per_s = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        assert self.peak_flops is not None
        metrics = {
            "loss": float(out.loss),
            "grad_norm": float(out.grad_norm),
            "lr": out.lr,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(self.flops_per_token, tokens_per_s, self.peak_flops * trainer.dist.world_size),
            "tokens_seen": float(trainer.tokens_seen),
        }
        trainer.throughput.append(tokens_per_s)
        trainer.log(out.step, metrics)
        self._restart()

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None:
        self._restart()  # the rollback's own time is not training throughput


class MetricsFile(Callback):
    """``metrics.jsonl`` in the run directory: one line per log, rollback and resume (the plot's source)."""

    name = "metrics_file"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.fh = self.path.open("a", encoding="utf-8")

    def on_start(self, trainer: Trainer) -> None:
        if trainer.resumed_from:
            self.fh.write(json.dumps({"event": "resume", "step": trainer.step, "checkpoint": trainer.resumed_from}) + "\n")

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self.fh.flush()

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None:
        self.fh.write(json.dumps({"event": "rollback", **event.to_dict()}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class LossCurve(Callback):
    """``loss_curve.png``: training and validation loss by step, each spike marked and annotated."""

    name = "loss_curve"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None:
        plot_loss_curve(self.run_dir)

    def on_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        plot_loss_curve(self.run_dir)


def plot_loss_curve(run_dir: Path) -> Path:
    """Draw ``metrics.jsonl`` of ``run_dir``; a rollback or a resume starts a new segment of the line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments: list[list[tuple[int, float]]] = [[]]
    val: list[tuple[int, float]] = []
    events = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "rollback":
            events.append(row)
            segments.append([])
        elif row.get("event") == "resume":
            segments.append([])
        elif "loss" in row:
            segments[-1].append((row["step"], row["loss"]))
        if "val_loss" in row:
            val.append((row["step"], row["val_loss"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = [segment for segment in segments if segment]
    for i, segment in enumerate(drawn):
        steps, losses = zip(*segment, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=1.0 if i == len(drawn) - 1 else 0.45,
                label="train loss" if i == 0 else None)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="tab:green", label="validation loss")
    for event in events:
        spike = event["spike"]
        # A non-finite loss is drawn at the top of the axis.
        y = spike["loss"] if math.isfinite(spike["loss"]) else ax.get_ylim()[1]
        ax.plot([spike["step"]], [y], "x", color="red", markersize=10, markeredgewidth=2)
        ax.annotate(
            f"#{event['attempt']} {spike['reason']}\nback to {event['rollback_step']},\nskip {event['batches_skipped']}",
            (spike["step"], y), textcoords="offset points", xytext=(6, -30), fontsize=7, color="red",
        )
        ax.axvspan(event["rollback_step"], spike["step"], color="red", alpha=0.07)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss (faded: steps redone after a rollback or resume)")
    ax.legend(loc="upper right")
    path = run_dir / LOSS_CURVE
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class MLflowCallback(Callback):
    """Metrics, spike events and system metrics into an MLflow run, from a background thread.

    The loop only puts items on a bounded queue; a worker thread sends them in order. A
    tracking server that is slow or gone costs the loop nothing: an item that fails to send
    stays at the head of the queue and is retried, waiting ``retry_min`` seconds and doubling up
    to ``retry_max``, so an outage delays metrics and loses none once the server is back (an item
    the server answers with a client error, which no retry would change, is counted and dropped). Each
    metric keeps the time it was produced, so a retry of a batch the server did store is an exact
    duplicate, which MLflow ignores. Items that do not fit the queue are counted as dropped;
    ``close`` waits at most ``close_timeout`` seconds and counts what is still unsent. The counts
    end up in the run's result; every metric is in ``metrics.jsonl`` regardless.
    """

    name = "mlflow"

    def __init__(
        self, run_id: str, max_queue: int = 10_000, close_timeout: float = 30.0, retry_min: float = 0.2, retry_max: float = 2.0
    ) -> None:
        self.run_id = run_id
        self.close_timeout = close_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self.failed = 0  # attempts that failed and were retried
        self.dropped = 0  # items that never entered the queue
        self.rejected = 0  # items the server refused for good (a 4xx answer): retrying cannot help
        self.unsent = 0  # items still queued when close gave up
        self.closing = threading.Event()  # set when close gives up: the worker stops retrying
        self.system_monitor: Any = None
        self.worker = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self.worker.start()

    def _put(self, kind: str, payload: Any) -> None:
        try:
            self.queue.put_nowait((kind, payload))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("MLflow logging queue is full (tracking server slow or down): dropping metrics")

    def _work(self) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        while (item := self.queue.get()) is not None:
            kind, payload = item
            wait = self.retry_min
            while not self.closing.is_set():
                try:
                    if kind == "metrics":
                        step, stamp, metrics = payload
                        client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])
                    else:
                        client.log_batch(self.run_id, tags=[_tag(k, v) for k, v in payload.items()])
                    break
                except Exception as err:  # noqa: BLE001 - no tracking failure may reach the loop
                    if _refused(err):
                        self.rejected += 1
                        log.warning("MLflow refused a %s item (dropped; it is in metrics.jsonl): %s", kind, err)
                        break
                    self.failed += 1
                    if self.failed == 1:
                        log.warning("MLflow logging failed (training goes on; retrying, metrics are in metrics.jsonl): %s", err)
                    self.closing.wait(wait)
                    wait = min(2 * wait, self.retry_max)
            self.queue.task_done()

    def on_start(self, trainer: Trainer) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.system_monitor = SystemMetricsMonitor(self.run_id)
            self.system_monitor.start()
        except Exception as err:  # noqa: BLE001 - system metrics are optional
            log.warning("MLflow system metrics are off: %s", err)
        self._put("tags", {PEAK_TFLOPS: f"{trainer.peak_flops / 1e12:.3f}"})

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self._put("metrics", (step, _now_ms(), metrics))

    def on_rollback(self, trainer: Trainer, event: SpikeEvent) -> None:
        spike = event.spike
        # MLflow stores NaN and Inf, so a non-finite spike is logged as what it was.
        metrics = {
            "spike.loss": spike.loss,
            "spike.grad_norm": spike.grad_norm,
            "spike.batches_skipped": float(event.batches_skipped),
            "spike.lr_scale": event.lr_scale,
            "spike.rollback_step": float(event.rollback_step),
        }
        if spike.threshold is not None:
            metrics["spike.threshold"] = spike.threshold
        self._put("metrics", (spike.step, _now_ms(), metrics))
        prefix = f"{SPIKE_PREFIX}{event.attempt}"
        self._put("tags", {
            f"{prefix}.step": spike.step,
            f"{prefix}.reason": spike.reason,
            f"{prefix}.summary": event.summary(),
            f"{prefix}.skipped": f"[{event.skipped[0]}, {event.skipped[1]})",
            f"{prefix}.documents": event.evidence.get("documents", 0),
            f"{prefix}.rare_token_share": event.evidence.get("rare_token_share", 0.0),
        })

    def close(self) -> None:
        deadline = time.monotonic() + self.close_timeout
        try:
            self.queue.put(None, timeout=self.close_timeout)
            stop_marker = 1
        except queue.Full:
            stop_marker = 0
        self.worker.join(max(deadline - time.monotonic(), 0.0))
        if self.worker.is_alive():
            self.closing.set()
            self.unsent = self.queue.unfinished_tasks - stop_marker
            log.warning("MLflow logging did not finish within %.0fs: %d items unsent (all are in metrics.jsonl)",
                        self.close_timeout, self.unsent)
        if self.system_monitor is not None:
            try:
                self.system_monitor.finish()
            except Exception as err:  # noqa: BLE001
                log.warning("MLflow system metrics did not stop cleanly: %s", err)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _refused(err: Exception) -> bool:
    """A 4xx answer other than 429 (too many requests): the request itself is wrong, not the server's state."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and 400 <= err.get_http_status_code() < 500 and err.get_http_status_code() != 429


def _tag(key: str, value: Any) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, str(value)[:5000])

"""The training loop: steps, checkpoints, resume, and the rollback a spike triggers.

``train`` is the plain function every launch runs, on 1 or N processes alike: it joins the
process group, builds the data, model and engine, resumes from the newest checkpoint that
verifies (or saves step 0), trains with callbacks, and saves the final model in HF format.

A rollback (PaLM's recipe, closed-loop): restore model, optimizer, loader and guard from the
newest known-good checkpoint and delete the newer ones (so no resume starts from them); skip
the mix batches from that checkpoint's position to the end of the spike step's batches plus
``rollback_margin_steps`` steps' worth (every count in the guard is in optimizer steps; a
step is ``grad_accumulation`` mix batches), unless ``spike_guard.skip_window`` is off; scale the learning rate down for
``lr_scale_steps``; record the event and its evidence in the ledger; go on. Every rank takes
the same decision, because the values it is taken on (loss averaged over ranks, global grad
norm) are the same on every rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ladder.artifacts import write_jsonl
from models.llama import flops_per_token
from tasks.train.callbacks import (
    Callback,
    CheckpointCallback,
    EvalCallback,
    LossCurve,
    MetricsFile,
    MLflowCallback,
    SpeedMonitor,
    SpikeGuardCallback,
    StepOutput,
)
from tasks.train.checkpoint import Checkpoint, CheckpointStore, write_json_atomic
from tasks.train.config import TrainConfig
from tasks.train.continued import initial_model, resolve
from tasks.train.data import MAIN, REPLAY, TrainData, merge_ranges
from tasks.train.engine import Dist, TrainEngine, deterministic_algorithms, init_distributed
from tasks.train.faults import FAULTED_SHARDS_DIR, FaultInjector, write_faulted_shards
from tasks.train.loader import Batch, PackedLoader
from tasks.train.schedule import lr_at
from tasks.train.shards import PackedShards
from tasks.train.spike import RetryBudgetExhausted, Spike, SpikeEvent, rare_token_mask, window_evidence

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from models.llama import ModelConfig

log = logging.getLogger(__name__)

RESULT = "result.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
EVIDENCE_DIR = "spikes"


class Trainer:
    """One run's state and loop; callbacks do everything but stepping, restoring and rolling back."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        dist: Dist,
        engine: TrainEngine,
        data: TrainData,
        val_shards: PackedShards,
        model_cfg: ModelConfig,
        callbacks: list[Callback],
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.dist = dist
        self.engine = engine
        self.data = data
        self.val_shards = val_shards
        self.model_cfg = model_cfg
        self.callbacks = callbacks
        self.tokenizer = tokenizer
        self.seq_len = data.seq_len
        self.total_steps = cfg.total_steps(self.seq_len)
        self.store = CheckpointStore(run_dir / CHECKPOINTS_DIR, dist)
        self.ledger = self.store.read_ledger()
        self.faults = FaultInjector(cfg.faults, cfg.seed, model_cfg.vocab_size, cfg.grad_accumulation)
        self.fault_at_step: dict[int, str] = {}
        self.step = 0
        self.tokens_seen = 0
        self.lr_scale = 1.0
        self.lr_scale_until = 0
        self.peak_flops = 0.0  # set by SpeedMonitor.on_start
        self.throughput: list[float] = []
        self.resumed_from: str | None = None
        self.skipped_checkpoints: list[dict[str, Any]] = []
        self._spike: Spike | None = None
        self.stopped: dict[str, Any] | None = None  # set by request_stop: the run ends early, as is
        self._spike_data_end = 0
        self._unconfirmed: Checkpoint | None = None
        self._rare: tuple[np.ndarray, float] | None = None

    # ---- hooks the callbacks call -------------------------------------------------------

    @property
    def rollback_requested(self) -> bool:
        return self._spike is not None

    def request_rollback(self, spike: Spike, data_end: int) -> None:
        """Roll back before the next step; ``data_end``: the mix number after the spike step's last batch."""
        self._spike = spike
        self._spike_data_end = data_end

    def request_stop(self, step: int, reason: str) -> None:
        """End the run after the current step (a detector whose framework stops the run on a spike)."""
        self.stopped = {"step": step, "reason": reason}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.dist.is_main:
            log.info("step %d/%d %s", step, self.total_steps, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        for cb in self.callbacks:
            cb.on_log(self, step, metrics)

    def flush_checks(self) -> None:
        for cb in self.callbacks:
            if isinstance(cb, SpikeGuardCallback):
                cb.flush(self)

    def save_checkpoint(self) -> Checkpoint | None:
        """Checkpoint the current step, unless a pending check finds a spike (then the loop rolls back)."""
        self.flush_checks()
        if self.rollback_requested:
            return None
        trainer_state = {
            "tokens_seen": self.tokens_seen,
            "world_size": self.dist.world_size,
            "zero_stage": self.cfg.zero_stage,
            "config_hash": self.cfg.hash(),
            "fired_faults": sorted(self.faults.fired),
            "callbacks": {cb.name: s for cb in self.callbacks if (s := cb.state_dict()) is not None},
        }
        ckpt = self.store.save(
            self.step, self.engine, {"data": self.data.state_dict()}, trainer_state, self.cfg.checkpoint
        )
        self._unconfirmed = ckpt
        return ckpt

    def confirm(self, step: int) -> None:
        """The guard passed ``step``: the checkpoint written just before it is known-good."""
        if self._unconfirmed is not None and step == self._unconfirmed.step + 1:
            self.store.mark_known_good(self._unconfirmed)
            self._unconfirmed = None

    def evaluate(self) -> float:
        """Token-weighted validation cross-entropy over the same first batches every time."""
        return self.validation()[0]

    def validation(self) -> tuple[float, float | None]:
        """The validation loss of :meth:`evaluate` and its standard error (None from a single sequence).

        Each sequence is a cluster of tokens (x_i = summed cross-entropy, c_i = its tokens) and the
        loss is the ratio estimator sum(x) / sum(c); its delta-method variance is
        sum((x_i - r c_i)^2) / (n (n - 1) mean(c)^2), which tokens sharing a context do not make
        look smaller than it is. The scaling gate holds a prediction's miss against this noise.
        Only sums over sequences travel between processes, so N processes give the numbers of one.
        """
        loader = PackedLoader(
            self.val_shards, self.cfg.micro_batch_size, self.cfg.seed, self.dist.rank, self.dist.world_size, shuffle=False
        )
        # (ce * tokens, tokens) as the loss has always been summed; then sum x^2, sum x c, sum c^2 and n over sequences.
        sums = torch.zeros(6, dtype=torch.float64, device=self.dist.device)
        self.engine.module.eval()
        with torch.no_grad():
            # In micro-batches, so that 1 and N processes evaluate the same sequences.
            micro_batches = self.cfg.eval.batches * self.cfg.grad_accumulation
            for batch in islice(loader, min(micro_batches, loader.batches_per_epoch)):
                _, parts = self.engine.loss(batch, z_loss=0.0, rows=True)
                x, c = parts["row_ce"].double(), parts["row_tokens"].double()
                sums += torch.stack([
                    parts["ce"].double() * parts["tokens"], parts["tokens"].double(),
                    (x * x).sum(), (x * c).sum(), (c * c).sum(), (c > 0).sum().double(),
                ])
        self.engine.module.train()
        self._all_reduce_sum(sums)
        x, c, xx, xc, cc, n = (float(v) for v in sums)
        loss = x / max(c, 1.0)
        if n < 2:
            return loss, None
        spread = max(xx - 2 * loss * xc + loss * loss * cc, 0.0)
        return loss, math.sqrt(spread / (n * (n - 1))) / (c / n)

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        self._resume_or_start()
        for cb in self.callbacks:
            cb.on_start(self)
        batches = iter(self.data)
        while True:
            while self.step < self.total_steps and self.stopped is None:
                out = self._train_step(batches)
                for cb in self.callbacks:
                    cb.on_step(self, out)
                    if self.rollback_requested:
                        break
                if self.rollback_requested:
                    self._rollback()
                    batches = iter(self.data)
            self.flush_checks()
            if not self.rollback_requested:
                break
            self._rollback()
            batches = iter(self.data)
        if self.store.all()[-1].step != self.step:
            self.save_checkpoint()  # so a rerun of a finished run resumes at its end
        final_val_loss, final_val_stderr = self.validation()
        self.log(self.step, {"val_loss": final_val_loss})
        model_dir = self._save_final_model()
        result = {
            "model_dir": str(model_dir),
            "final_val_loss": final_val_loss,
            "final_val_loss_stderr": final_val_stderr,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "spike_events": self.ledger["events"],
            "tokens_per_s": _median(self.throughput),
            "mfu": _median(self.throughput) * flops_per_token(self.model_cfg, self.seq_len, include_logits=True)
            / (self.peak_flops * self.dist.world_size),
            "peak_tflops_per_process": self.peak_flops / 1e12,
            "resumed_from": self.resumed_from,
            "stopped": self.stopped,
            "skipped_checkpoints": self.skipped_checkpoints,
            "world_size": self.dist.world_size,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        }
        for cb in self.callbacks:
            cb.on_end(self, result)
        return result

    def _train_step(self, batches: Iterator[tuple[int, str, Batch]]) -> StepOutput:
        step = self.step + 1
        due = self.faults.due(step)
        lr = lr_at(step, self.total_steps, self.cfg.optimizer.lr, self.cfg.schedule)
        lr *= (self.lr_scale if step <= self.lr_scale_until else 1.0) * self.faults.lr_factor(due)
        self.engine.set_lr(lr)
        losses = []
        injected = set(due)
        for _ in range(self.cfg.grad_accumulation):
            index, _, batch = next(batches)
            if (fault := self.faults.data_fault(index)) is not None:
                injected.add(fault)
            batch = self.faults.batch(index, batch, self.dist.rank, self.dist.world_size)
            loss, _ = self.engine.loss(batch, self.model_cfg.z_loss)
            loss = self.faults.loss(due, loss, self.engine.module)
            self.engine.backward(loss)
            losses.append(loss.detach())
            grad_norm = self.engine.step()
        assert grad_norm is not None, "the last micro-batch must end the accumulation"
        mean_loss = torch.stack(losses).mean()
        if self.dist.world_size > 1:
            self._all_reduce_sum(mean_loss)
            mean_loss = mean_loss / self.dist.world_size
        self.faults.fired.update(due)
        if injected:
            self.fault_at_step[step] = self.faults.describe(sorted(injected))
        else:
            self.fault_at_step.pop(step, None)  # a step trained again after a rollback, on other data
        tokens = self.cfg.global_batch_size * self.seq_len
        self.step = step
        self.tokens_seen += tokens
        return StepOutput(step, mean_loss, grad_norm, lr, tokens, self.data.position)

    def _broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.dist.world_size == 1:
            return value
        import torch.distributed

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self.dist.world_size > 1:
            import torch.distributed

            torch.distributed.all_reduce(tensor)

    # ---- resume and rollback ---------------------------------------------------------------------

    def _resume_or_start(self) -> None:
        ckpt, self.skipped_checkpoints = self.store.newest()
        if ckpt is None:
            self._apply_ledger()
            self.save_checkpoint()
            return
        saved_hash = ckpt.meta["config_hash"]
        if saved_hash != self.cfg.hash():
            raise ValueError(
                f"{self.run_dir} holds checkpoints of config {saved_hash}, this run's config is {self.cfg.hash()}: "
                "use a new run directory (or the config those checkpoints were written with)"
            )
        self._restore(ckpt)
        self._unconfirmed = None if ckpt.known_good else ckpt
        self.resumed_from = ckpt.path.name
        log.info("resumed from %s (step %d)", ckpt.path.name, self.step)

    def _apply_ledger(self) -> None:
        """Skips, fired faults and the learning-rate cut recorded by earlier rollbacks of this run."""
        for lo, hi in self.ledger["skips"]:
            self.data.skip(lo, hi)
        self.faults.fired.update(self.ledger["fired_faults"])
        if self.ledger["events"]:
            last = self.ledger["events"][-1]
            self.lr_scale, self.lr_scale_until = last["lr_scale"], last["lr_scale_until_step"]

    def _restore(self, ckpt: Checkpoint) -> None:
        rank_state, meta = self.store.load(ckpt, self.engine)
        self.data.load_state_dict(rank_state["data"])
        self.step = meta["step"]
        self.tokens_seen = meta["tokens_seen"]
        self.faults.fired.update(meta["fired_faults"])
        for cb in self.callbacks:
            if cb.name in meta["callbacks"]:
                cb.load_state_dict(meta["callbacks"][cb.name])
        self._apply_ledger()

    def _rollback(self) -> None:
        spike = self._spike
        assert spike is not None
        guard = self.cfg.spike_guard
        events = self.ledger["events"]
        if len(events) >= guard.max_retries:
            self.ledger["failed"] = {"spike": asdict(spike), "detected_at_step": self.step}
            self.store.write_ledger(self.ledger)
            raise RetryBudgetExhausted(events, spike, guard.max_retries)
        ckpt, _ = self.store.newest(known_good=True) if self.dist.is_main else (None, [])
        # Rank 0 looks at the files; every rank must restore the same checkpoint.
        name = self._broadcast(ckpt.path.name if ckpt else None)
        if name is None:
            raise RuntimeError(f"spike at step {spike.step} ({spike.reason}) but no known-good checkpoint verifies")
        ckpt = next(c for c in self.store.all() if c.path.name == name)
        start = json.loads((ckpt.path / "rank-0.json").read_text())["data"]["position"]
        # From the spike step's data on (the guard may see it a step late), in steps of A mix batches.
        stop = self._spike_data_end + guard.rollback_margin_steps * self.cfg.grad_accumulation
        evidence, rows = self._evidence(start, stop) if self.dist.is_main else ({}, [])
        detected_at = self.step
        self._restore(ckpt)
        self._unconfirmed = None
        # Before the ledger records the rollback: a crash in between resumes from ``ckpt`` and
        # meets the spike again, never from a discarded state with the rollback on record.
        self.store.discard_after(ckpt)
        skipped = (start, stop) if guard.skip_window else (start, start)  # the evidence still covers [start, stop)
        if guard.skip_window:
            self.data.skip(start, stop)
        self.lr_scale, self.lr_scale_until = guard.lr_scale, ckpt.step + guard.lr_scale_steps
        event = SpikeEvent(
            attempt=len(events) + 1,
            spike=spike,
            detected_at_step=detected_at,
            rollback_checkpoint=ckpt.path.name,
            rollback_step=ckpt.step,
            skipped=skipped,
            lr_scale=self.lr_scale,
            lr_scale_until_step=self.lr_scale_until,
            fault=self.fault_at_step.get(spike.step),
            evidence=evidence,
        )
        # The evidence and the callbacks' records (metrics file, plot, MLflow) come before the
        # ledger commits the rollback: a crash after the commit finds nothing left to report, one
        # before it redoes the rollback and reports it again rather than never.
        if self.dist.is_main:
            log.warning("spike guard: %s", event.summary())
            evidence = self.run_dir / EVIDENCE_DIR / f"evidence-{event.attempt}.jsonl"
            tmp = evidence.with_name(f".{evidence.name}.tmp")
            write_jsonl(tmp, rows)
            os.replace(tmp, evidence)
        self._spike = None
        for cb in self.callbacks:
            cb.on_rollback(self, event)
        events.append({**event.to_dict(), "summary": event.summary()})
        if guard.skip_window:
            self.ledger["skips"] = [list(r) for r in merge_ranges([*map(tuple, self.ledger["skips"]), skipped])]
        self.ledger["fired_faults"] = sorted(self.faults.fired)
        self.store.write_ledger(self.ledger)

    def _evidence(self, start: int, stop: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if self._rare is None:
            self._rare = rare_token_mask(self.data, self.cfg.spike_guard.rare_k, self.model_cfg.vocab_size)
        rare, baseline = self._rare
        return window_evidence(self.data, self.faults, start, stop, rare, baseline)

    # ---- the result --------------------------------------------------------------------------

    def _save_final_model(self) -> Path:
        """``model/``: save_pretrained (safetensors) plus the tokenizer, loadable by HF, TRL and lm-eval."""
        weights = self.engine.full_weights()  # collective under ZeRO-3
        final = self.run_dir / MODEL_DIR
        if self.dist.is_main:
            tmp = self.run_dir / f".tmp-{MODEL_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.engine.module.save_pretrained(tmp, state_dict=weights)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        if self.dist.world_size > 1:
            import torch.distributed

            torch.distributed.barrier()
        return final


def _median(values: list[float]) -> float:
    """Median of the logged throughputs (the first interval includes start-up, so not the mean)."""
    return statistics.median(values) if values else 0.0


def train(
    cfg: TrainConfig,
    train_shards: Path,
    val_shards: Path,
    run_dir: Path,
    tokenizer_dir: Path | None = None,
    mlflow_run_id: str | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns the result (also ``result.json`` on rank 0).

    ``extra_callbacks`` run first at every hook, before the guard, checkpoints and logs (the
    spike suite's detectors: what they change about a step is what gets checkpointed).

    Raises ``RetryBudgetExhausted`` (its message reports every rollback) when spikes outlast
    ``spike_guard.max_retries``.
    """
    # Before the process group, the model and the first matmul: cuBLAS reads its workspace setting once.
    with deterministic_algorithms(cfg.deterministic, cuda=torch.cuda.is_available()):
        dist = init_distributed()
        run_dir.mkdir(parents=True, exist_ok=True)
        shards = {MAIN: PackedShards(train_shards)}
        cfg = resolve(cfg, shards[MAIN])  # the config checkpoints are tagged with, however it was launched
        if cfg.replay.shards_dir:
            shards[REPLAY] = PackedShards(Path(cfg.replay.shards_dir))
        data = TrainData(shards, cfg.replay.share, cfg.micro_batch_size, cfg.seed, dist.rank, dist.world_size)
        if any(fault.kind == "shard_window" for fault in cfg.faults):
            faulted = run_dir / FAULTED_SHARDS_DIR
            if dist.is_main:
                write_faulted_shards(cfg.faults, data, cfg.seed, cfg.grad_accumulation, faulted)
            if dist.world_size > 1:
                torch.distributed.barrier()  # the other ranks read the copy rank 0 wrote
            shards = {name: PackedShards(faulted / name) for name in shards}
            data = TrainData(shards, cfg.replay.share, cfg.micro_batch_size, cfg.seed, dist.rank, dist.world_size)
        val = PackedShards(val_shards)
        if val.seq_len != data.seq_len:
            raise ValueError(f"validation shards have seq_len {val.seq_len}, training shards {data.seq_len}: pack both alike")
        model, model_cfg, tokenizer = initial_model(cfg, shards[MAIN], tokenizer_dir)
        if REPLAY in shards and shards[REPLAY].index["vocab_size"] > model_cfg.vocab_size:
            raise ValueError(
                f"the replay shards at {cfg.replay.shards_dir} use {shards[REPLAY].index['vocab_size']} token ids but the "
                f"model has {model_cfg.vocab_size}: pack the replay data with the base model's tokenizer"
            )
        engine = TrainEngine(model, cfg, dist)
        # On an accelerator the guard reads each step one step late, so the host never waits.
        lag = 1 if dist.device.type == "cuda" else 0
        callbacks: list[Callback] = list(extra_callbacks)
        if cfg.spike_guard.enabled:
            callbacks.append(SpikeGuardCallback(cfg.spike_guard, lag))
        callbacks += [
            SpeedMonitor(cfg.log_every, flops_per_token(model_cfg, data.seq_len, include_logits=True), cfg.peak_tflops),
            EvalCallback(cfg.eval.every_steps),
            CheckpointCallback(cfg.checkpoint.every_steps, cfg.checkpoint.keep_steps),
        ]
        if dist.is_main:
            callbacks += [MetricsFile(run_dir), LossCurve(run_dir)]
            if mlflow_run_id:
                callbacks.append(MLflowCallback(mlflow_run_id))
        trainer = Trainer(cfg, run_dir, dist, engine, data, val, model_cfg, callbacks, tokenizer)
        try:
            result = trainer.fit()
        finally:
            for cb in callbacks:
                cb.close()
        if dist.is_main:
            result["mlflow"] = next(
                ({"failed": cb.failed, "dropped": cb.dropped, "rejected": cb.rejected, "unsent": cb.unsent}
                 for cb in callbacks if isinstance(cb, MLflowCallback)),
                None,
            )
            write_json_atomic(run_dir / RESULT, result)
    return result


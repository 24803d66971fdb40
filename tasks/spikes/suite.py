"""The spike suite: ladder's guard against the published spike rules, on the same seeded spikes.

Run it with ``.venv/bin/python bench/spikes.py [--steps 200] [--onset 120]`` (about four
minutes on 2 cores) or as the ``spikes`` flow (``flows/spikes.py``), whose report is a Prefect artifact.
Every policy trains every scenario from the same seed, on the same tiny Llama (about 90k
parameters) and synthetic data (documents that follow a fixed next-token map with
probability 0.75, so the loss floor is well above zero), with the same checkpoints.

Scenarios: clean runs (two seeds: any alarm is a false one), a garbage window in a copy of the
shards (4 steps' batches, so a replay meets it again), the learning rate x100 for 5 steps, a
NaN loss, one huge gradient element (a bit flip's footprint; the loss is unchanged), and a
slow divergence from a peak learning rate 100x too high (0.3; x10 still trains well here). Each fault starts at step ``onset``.

Policies, each published rule with the action its framework takes:

- ``none``: no detector (the control);
- ``ladder``: ``tasks.train.spike.SpikeGuard`` with its rollback, skip and learning-rate cut;
- ``olmo-core``: skip the step's update when loss or grad norm is more than 6 sigma off the mean
  of the last 128 steps;
- ``llm-foundry``: stop the run after 5 consecutive losses of at least 2x the last 100's mean;
- ``megatron``: stop on a NaN/Inf loss before it is applied; a loss of at least 10x the largest of
  the first 100 is flagged (with a deterministic rerun reproducing it, training goes on);
- ``zclip``: clip the gradient to the EMA mean + 2.5 EMA std of the grad norm when its z-score is
  over 2.5 (and always to the fixed cap of 1, as every other policy's engine does);

and each published rule driving ladder's recovery instead (``olmo-core+rollback``,
``llm-foundry+rollback``, ``megatron+rollback``, ``zclip+rollback``): the rule decides, the loop
rolls back, skips and cuts the learning rate as it does for ``ladder``. Those pairs tell a better
rule from a better action.

The table gives per policy: recall over the fault scenarios (an alarm from the fault's first
step to 10 steps after its last), false alarms (clean runs, and before the onset) per 10k clean
steps, mean detection delay, steps lost (redone after a rollback, updates skipped, or not
trained after a stop), runs ending diverged (validation loss not finite or over 1.5x the clean
control's; a run the guard failed on purpose, with its report, counts here) and the mean final
validation loss relative to the clean control over the fault runs that ended finite; then each
scenario's cells.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ladder.config import build
from tasks.tokenizer.shards import write_packed
from tasks.train.callbacks import Callback, SpikeGuardCallback, StepOutput
from tasks.train.config import SpikeGuardConfig, TrainConfig
from tasks.train.loop import train
from tasks.train.spike import RetryBudgetExhausted, Spike

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from tasks.train.loop import Trainer

VOCAB, SEQ_LEN = 64, 32
DETECTION_SLACK = 10  # steps after a fault's last step in which an alarm still counts as detecting it
DIVERGED_RATIO = 1.5
# Final losses closer than this (relative to the clean control) are a tie: two clean seeds differ by about that much.
LOSS_TOLERANCE = 0.01
GRAD_CLIP = 1.0  # every policy's fixed cap on the grad norm (ZClip applies it itself)
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "intermediate_size": 128, "max_seq_len": 64}


@dataclass(frozen=True)
class Scenario:
    """A seeded run: its faults, config changes, and where the fault starts (None: clean or gradual)."""

    name: str
    seed: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    onset: int | None = None
    span: int = 1  # steps the fault lasts
    clean: bool = False


def scenarios(onset: int) -> list[Scenario]:
    return [
        Scenario("clean-seed0", seed=0, clean=True),
        Scenario("clean-seed1", seed=1, clean=True),
        Scenario("garbage-window", faults=[{"step": onset, "kind": "shard_window", "steps": 4}], onset=onset, span=4),
        Scenario("lr-x100-5-steps", faults=[{"step": onset + i, "kind": "lr_multiply", "factor": 100.0} for i in range(5)],
                 onset=onset, span=5),
        Scenario("nan-loss", faults=[{"step": onset, "kind": "nan_loss"}], onset=onset),
        Scenario("huge-gradient", faults=[{"step": onset, "kind": "grad_spike", "factor": 1e6}], onset=onset),
        # Gradual: no step is the fault's, so any alarm counts as detecting it.
        Scenario("lr-too-high", overrides={"optimizer": {"lr": 0.3}}),
    ]


# ---- the published rules, re-implemented ---------------------------------------------------------


class Rule(Protocol):
    """A published spike rule, apart from what its framework does about a spike.

    ``observe`` takes each step's loss and global grad norm (before clipping) and returns a
    ``Spike`` when the rule fires; ``state_dict`` and ``load_state_dict`` let a checkpoint keep
    it, so that a rollback or a resume restores the rule with the weights. ``SpikeGuard`` (ladder's
    own rule) has the same three methods, which is what lets ``RollbackOn`` swap any rule in.
    """

    name: str

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OlmoCoreRule:
    """OLMo-core's ``SkipStepOptimizer`` (allenai/OLMo-core, src/olmo_core/optim/skip_step_optimizer.py,
    ``get_step_factor``): the last ``window`` + 1 losses and grad norms, every step's included
    (flagged ones too); from ``max(20, window // 2)`` values on, a step fires unless
    |x - mean| / std of the earlier values is at most ``sigma`` for the loss and the grad norm
    (a NaN fails the test, and once in the window makes every step fail until it leaves)."""

    name = "olmo-core"

    def __init__(self, window: int = 128, sigma: float = 6.0) -> None:
        self.window, self.sigma = window, sigma
        self.losses: deque[float] = deque(maxlen=window + 1)
        self.grad_norms: deque[float] = deque(maxlen=window + 1)

    def _outlier(self, values: deque[float]) -> tuple[bool, float]:
        """Whether the newest value fails the test, and the bar it had to stay under."""
        earlier = np.asarray(list(values)[:-1])
        mean, std = earlier.mean(), earlier.std(ddof=1)  # torch.std_mean: unbiased
        with np.errstate(invalid="ignore", divide="ignore"):
            return not abs(values[-1] - mean) / std <= self.sigma, float(mean + self.sigma * std)

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        if len(self.losses) < max(20, self.window // 2):
            return None
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return Spike(step, "non-finite", loss, grad_norm, None)
        for reason, values in (("loss", self.losses), ("grad_norm", self.grad_norms)):
            outlier, bar = self._outlier(values)
            if outlier:
                return Spike(step, reason, loss, grad_norm, bar)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.window + 1)
        self.grad_norms = deque(state["grad_norms"], maxlen=self.window + 1)


class LLMFoundryRule:
    """LLM Foundry's ``KillLossSpike`` (mosaicml/llm-foundry, llmfoundry/callbacks/kill_loss_spike_callback.py):
    once ``window`` losses are kept, a loss of at least ``ratio`` x their mean is an outlier; it
    fires on more than ``patience`` outliers in a row. Every loss joins the window; NaN is never an
    outlier."""

    name = "llm-foundry"

    def __init__(self, window: int = 100, ratio: float = 2.0, patience: int = 4) -> None:
        self.ratio, self.patience = ratio, patience
        self.losses: deque[float] = deque(maxlen=window)
        self.outliers = 0

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        spike = None
        if len(self.losses) == self.losses.maxlen:
            bar = self.ratio * float(np.mean(self.losses))
            if loss >= bar:
                self.outliers += 1
                if self.outliers > self.patience:
                    spike = Spike(step, "loss", loss, grad_norm, bar)
            else:
                self.outliers = 0
        self.losses.append(loss)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "outliers": self.outliers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.losses.maxlen)
        self.outliers = state["outliers"]


class MegatronRule:
    """Megatron-LM's loss checks (NVIDIA/Megatron-LM, megatron/core/rerun_state_machine.py,
    ``is_unexpectedly_large``; megatron/training/training.py passes ``threshold=10`` for the loss):
    a NaN or Inf loss fires (Megatron finds it before the optimizer step), and so does a loss of at
    least ``factor`` x the largest |loss| of the first ``samples`` (Megatron calls it "spiky").
    Non-finite values never enter the first-``samples`` maximum; the grad norm is not watched."""

    name = "megatron"

    def __init__(self, factor: float = 10.0, samples: int = 100) -> None:
        self.factor, self.samples = factor, samples
        self.seen = 0
        self.largest = 0.0

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        size = abs(loss)
        if not math.isfinite(size):
            return Spike(step, "non-finite", loss, grad_norm, None)
        if self.seen < self.samples:
            self.seen += 1
            self.largest = max(self.largest, size)
        elif size >= self.factor * self.largest:
            return Spike(step, "loss", loss, grad_norm, self.factor * self.largest)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "largest": self.largest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.largest = state["seen"], state["largest"]


class ZClipRule:
    """ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
    arXiv:2504.02507; bluorion-com/ZClip): the mean and variance of the grad norm start as those of
    the first ``warmup_steps`` norms, then follow an EMA (``alpha``). After the warm-up a norm whose
    z-score (g - mean) / (std + eps) exceeds ``z_thresh`` fires, with the bound mean + z_thresh x std
    as its threshold, and the bound, not the outlier, enters the EMA. (The paper's default bound, its
    "reciprocal" clipping, mean + z_thresh^2 / z x std, clips harder the larger the outlier; the plain
    bound is the variant we test.) A NaN norm is never an outlier and turns the statistics NaN, so
    the rule never fires again."""

    name = "zclip"

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25, eps: float = 1e-6) -> None:
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self.warmup: list[float] = []
        self.mean: float | None = None  # None until the warm-up ends
        self.var = 0.0

    def observe(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        if self.mean is None:
            self.warmup.append(grad_norm)
            if len(self.warmup) == self.warmup_steps:
                self.mean, self.var = float(np.mean(self.warmup)), float(np.var(self.warmup))
                self.warmup = []
            return None
        std = math.sqrt(self.var)
        spike = None
        if (grad_norm - self.mean) / (std + self.eps) > self.z_thresh:
            spike = Spike(step, "grad_norm", loss, grad_norm, self.mean + self.z_thresh * std)
        # The EMA sees the norm as clipped: an outlier must not raise the bar for the next one.
        seen = grad_norm if spike is None else self.mean + self.z_thresh * std
        self.mean = self.alpha * self.mean + (1 - self.alpha) * seen
        self.var = self.alpha * self.var + (1 - self.alpha) * (seen - self.mean) ** 2
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup, self.mean, self.var = list(state["warmup"]), state["mean"], state["var"]


# ---- what each framework does when its rule fires -----------------------------------------------


class Detector(Callback):
    """A published rule acting as its framework does; ``fired`` lists the steps it acted on."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name
        self.fired: list[int] = []
        self.steps_lost = 0

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


class _PreStepDetector(Detector):
    """A rule its framework applies before the optimizer step. Ladder's loop checks after it, so
    the callback keeps the state from before each step and puts it back when the rule acts."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.before: tuple[dict[str, Any], dict[str, Any]] | None = None

    def on_start(self, trainer: Trainer) -> None:
        self._keep(trainer)

    def _keep(self, trainer: Trainer) -> None:
        self.before = (trainer.engine.full_weights(), copy.deepcopy(trainer.engine.optimizer_state()))

    def _undo_step(self, trainer: Trainer) -> None:
        assert self.before is not None
        weights, optimizer = self.before
        trainer.engine.load_weights(weights)
        trainer.engine.load_optimizer_state(copy.deepcopy(optimizer))


class SkipStep(_PreStepDetector):
    """OLMo-core's action: the step's update is not applied (its data is consumed all the same)."""

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        if self.rule.observe(out.step, float(out.loss), float(out.grad_norm)) is not None:
            self.fired.append(out.step)
            self.steps_lost += 1
            self._undo_step(trainer)
            return
        self._keep(trainer)


class StopRun(Detector):
    """LLM Foundry's action with ``log_only=False``: ``LossSpikeError`` stops the run (here: after that step)."""

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        if (spike := self.rule.observe(out.step, float(out.loss), float(out.grad_norm))) is not None:
            self.fired.append(out.step)
            self.steps_lost = trainer.total_steps - out.step
            trainer.request_stop(out.step, f"{self.name}: {spike.reason} {spike.loss:.4g} >= {spike.threshold:.4g}")


class StopBeforeNonFinite(_PreStepDetector):
    """Megatron-LM's action: a non-finite loss is fatal before the optimizer step and ends the job; a
    spiky loss is not fatal, and when a rerun reproduces it (as a deterministic run does) training
    continues, so it is only flagged."""

    def on_step(self, trainer: Trainer, out: StepOutput) -> None:
        spike = self.rule.observe(out.step, float(out.loss), float(out.grad_norm))
        if spike is not None:
            self.fired.append(out.step)
            if spike.reason == "non-finite":
                self._undo_step(trainer)
                self.steps_lost = trainer.total_steps - out.step + 1
                trainer.request_stop(out.step, f"{self.name}: non-finite loss")
                return
        self._keep(trainer)


class ClipGradNorm(Detector):
    """ZClip's action: between the backward and the optimizer step, the gradient is scaled to the
    rule's bound when it fires, and in any case to ``max_grad_norm`` (ZClip's own fixed cap, which
    the run's ``grad_clip`` must leave to it: the engine's clipping would hide the raw norm).

    It hooks the optimizer's step (``register_step_pre_hook``), the one place in ladder's loop
    where the gradient is complete and not yet applied; so the plain one-process engine only."""

    def __init__(self, rule: Rule, max_grad_norm: float) -> None:
        super().__init__(rule)
        self.max_grad_norm = max_grad_norm
        self.hook: RemovableHandle | None = None

    def on_start(self, trainer: Trainer) -> None:
        if trainer.engine.deepspeed is not None:
            raise ValueError(f"{self.name} clips inside the plain optimizer's step: run one process at zero_stage 0")
        if trainer.cfg.grad_clip:
            raise ValueError(f"{self.name} applies the fixed cap itself after reading the raw norm: set grad_clip to 0")

        def clip(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            # The loss is not known to the optimizer, and ZClip never reads it.
            spike = self.rule.observe(trainer.step + 1, math.nan, float(norm))
            bound = self.max_grad_norm
            if spike is not None:
                assert spike.threshold is not None
                self.fired.append(spike.step)
                bound = min(bound, spike.threshold)
            torch.nn.utils.clip_grads_with_norm_(params, bound, norm)

        self.hook = trainer.engine.optimizer.register_step_pre_hook(clip)

    def close(self) -> None:
        if self.hook is not None:
            self.hook.remove()


class RollbackOn(SpikeGuardCallback):
    """Ladder's recovery (roll back to the last known-good checkpoint, skip the data window, cut the
    learning rate, within the retry budget: all as ``spike_guard`` configures) triggered by a
    published rule in place of ladder's own. It reads each step at once, as ladder's guard does on
    the CPU the suite trains on."""

    def __init__(self, cfg: SpikeGuardConfig, rule: Rule) -> None:
        super().__init__(cfg, lag=0)
        self.guard = rule  # the callback only calls observe, state_dict and load_state_dict on it


RULES: dict[str, Callable[[], Rule]] = {
    "olmo-core": OlmoCoreRule, "llm-foundry": LLMFoundryRule, "megatron": MegatronRule, "zclip": ZClipRule,
}
POLICIES: dict[str, Callable[[TrainConfig], Callback | None]] = {
    "none": lambda cfg: None,
    "ladder": lambda cfg: None,  # the guard is part of the loop's own callbacks
    "olmo-core": lambda cfg: SkipStep(OlmoCoreRule()),
    "llm-foundry": lambda cfg: StopRun(LLMFoundryRule()),
    "megatron": lambda cfg: StopBeforeNonFinite(MegatronRule()),
    "zclip": lambda cfg: ClipGradNorm(ZClipRule(), GRAD_CLIP),
    # Each published rule driving ladder's recovery (``rule=rule`` binds each its own).
    **{f"{name}+rollback": (lambda cfg, rule=rule: RollbackOn(cfg.spike_guard, rule())) for name, rule in RULES.items()},
}


# ---- running the suite ----------------------------------------------------------------------------


def write_data(root: Path) -> Path:
    """Synthetic packed shards (``root/train``, ``root/validation``) a tiny model learns in tens of steps."""
    successor = (np.arange(VOCAB) * 7 + 3) % (VOCAB - 2) + 2

    def documents(count: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(count):
            token = int(rng.integers(2, VOCAB))
            ids = [token]
            for _ in range(int(rng.integers(20, 60)) - 1):
                token = int(successor[token]) if rng.random() < 0.75 else int(rng.integers(2, VOCAB))
                ids.append(token)
            yield {"id": f"doc-{seed}-{i}", "source": ("plays", "letters")[i % 2], "meta": {}}, ids

    write_packed(root / "train", documents(1500, 1), SEQ_LEN, 0, 1, VOCAB)
    write_packed(root / "validation", documents(60, 2), SEQ_LEN, 0, 1, VOCAB)
    return root


def config(scenario: Scenario, policy: str, steps: int) -> TrainConfig:
    tree: dict[str, Any] = {
        "model": MODEL, "global_batch_size": 8, "micro_batch_size": 8, "max_steps": steps, "precision": "fp32",
        "log_every": 1, "peak_tflops": 0.1, "schedule": {"warmup_steps": 10}, "seed": scenario.seed,
        "checkpoint": {"every_steps": 10, "keep_last": 2}, "eval": {"every_steps": 10_000, "batches": 4},
        "spike_guard": {"enabled": policy == "ladder"}, "grad_clip": 0.0 if policy == "zclip" else GRAD_CLIP,
        "faults": scenario.faults, **scenario.overrides,
    }
    return build(TrainConfig, tree)


def run_one(scenario: Scenario, policy: str, steps: int, data: Path, work: Path) -> dict[str, Any]:
    """Train ``scenario`` under ``policy``; what it detected, lost and ended at."""
    cfg = config(scenario, policy, steps)
    detector = POLICIES[policy](cfg)
    run_dir = work / f"{policy}-{scenario.name}"
    try:
        result = train(cfg, data / "train", data / "validation", run_dir, extra_callbacks=[detector] if detector else ())
    except RetryBudgetExhausted as err:
        # The run failed with its report of every attempt: nothing it trained is kept.
        fired = [e["spike"]["step"] for e in err.events] + [err.last.step]
        return {"scenario": scenario.name, "policy": policy, "fired": fired, "steps_lost": steps, "final_val_loss": math.nan}
    if policy == "ladder" or isinstance(detector, RollbackOn):
        events = result["spike_events"]
        fired = [e["spike"]["step"] for e in events]
        lost = sum(e["detected_at_step"] - e["rollback_step"] for e in events)
    elif isinstance(detector, Detector):
        fired, lost = detector.fired, detector.steps_lost
    else:
        fired, lost = [], 0
    return {"scenario": scenario.name, "policy": policy, "fired": fired, "steps_lost": lost,
            "final_val_loss": result["final_val_loss"]}


def run_suite(
    steps: int = 200, onset: int = 120, policies: list[str] | None = None, only: list[str] | None = None,
    work: Path | None = None,
) -> list[dict[str, Any]]:
    """Every policy over every scenario (or those named in ``policies`` / ``only``); one row per run."""
    policies = policies or list(POLICIES)
    chosen = [s for s in scenarios(onset) if only is None or s.name in only]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = write_data(Path(tmp) / "data")
        rows = []
        for scenario in chosen:
            for policy in policies:
                row = run_one(scenario, policy, steps, data, Path(tmp))
                rows.append({**row, **judge(scenario, row["fired"])})
    return rows


def judge(scenario: Scenario, fired: list[int]) -> dict[str, Any]:
    """Whether ``fired`` detected the scenario's fault, its delay, and the false alarms among them."""
    if scenario.clean:
        return {"detected": None, "delay": None, "false_alarms": len(fired), "clean_steps": None}
    if scenario.onset is None:
        return {"detected": bool(fired), "delay": None, "false_alarms": 0, "clean_steps": 0}
    end = scenario.onset + scenario.span - 1 + DETECTION_SLACK
    hits = [step for step in fired if scenario.onset <= step <= end]
    return {"detected": bool(hits), "delay": hits[0] - scenario.onset if hits else None,
            "false_alarms": sum(step < scenario.onset for step in fired), "clean_steps": scenario.onset - 1}


def summarize(rows: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """One row per policy (see the module docstring); final losses relative to ``none`` on the first clean run."""
    control = next((r["final_val_loss"] for r in rows if r["policy"] == "none" and r["scenario"].startswith("clean")), None)
    summary = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        faulted = [r for r in mine if r["detected"] is not None]
        clean_steps = sum(steps if r["clean_steps"] is None else r["clean_steps"] for r in mine)
        delays = [r["delay"] for r in faulted if r["delay"] is not None]
        ratios = [r["final_val_loss"] / control for r in faulted] if control else []
        summary.append({
            "policy": policy,
            "recall": f"{sum(r['detected'] for r in faulted)}/{len(faulted)}",
            "false_alarms_per_10k": 1e4 * sum(r["false_alarms"] for r in mine) / max(clean_steps, 1),
            "mean_delay": float(np.mean(delays)) if delays else math.nan,
            "steps_lost": sum(r["steps_lost"] for r in mine),
            "diverged": sum(not math.isfinite(x) or x > DIVERGED_RATIO for x in ratios),
            "final_loss_vs_clean": float(np.mean([x for x in ratios if math.isfinite(x)] or [math.nan])),
            "runs_not_finite": sum(not math.isfinite(x) for x in ratios),
        })
    return summary


def verdict(summary: list[dict[str, Any]]) -> str:
    """Whether ladder's guard is at least as good as every other policy on recall and final loss, with no more false alarms."""
    by = {s["policy"]: s for s in summary}
    if "ladder" not in by:
        return "ladder's guard was not run"
    ours = by["ladder"]

    def recall(s: dict[str, Any]) -> float:
        hit, total = map(int, s["recall"].split("/"))
        return hit / total if total else 1.0

    worse = [
        name for name, s in by.items() if name not in ("ladder", "none") and (
            recall(s) > recall(ours)
            or s["false_alarms_per_10k"] < ours["false_alarms_per_10k"]
            or s["diverged"] < ours["diverged"]
            or s["final_loss_vs_clean"] < ours["final_loss_vs_clean"] - LOSS_TOLERANCE
        )
    ]
    if worse:
        return "ladder's guard is beaten by: " + ", ".join(worse)
    return "ladder's guard is at least as good as every other policy on recall, false alarms and final loss"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict[str, Any]], steps: int) -> str:
    """The report: the summary per policy, the verdict, then every scenario's cells."""
    summary = summarize(rows, steps)
    head = list(summary[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(s[k]) for k in head) + " |" for s in summary]
    lines += ["", verdict(summary), "",
              "| scenario | policy | fired at | detected | delay | false alarms | steps lost | final val loss |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fired = ",".join(map(str, r["fired"][:6])) + ("..." if len(r["fired"]) > 6 else "")
        lines.append(f"| {r['scenario']} | {r['policy']} | {fired or '-'} | {_cell(r['detected'])} | {_cell(r['delay'])} | "
                     f"{r['false_alarms']} | {r['steps_lost']} | {_cell(r['final_val_loss'])} |")
    return "\n".join(lines)

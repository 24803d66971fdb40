"""Learning rate as a pure function of the step: nothing to checkpoint, nothing to drift on resume."""

from __future__ import annotations

import math

from tasks.train.config import ScheduleConfig


def decay_start(total_steps: int, cfg: ScheduleConfig) -> int:
    """WSD: the last step at the peak learning rate of a run of ``total_steps``.

    It never decreases with ``total_steps``, so a shorter WSD run follows a longer one's schedule
    exactly up to its own decay start: from the longer run's checkpoint there, only the shorter
    run's decay is left to train (the decay branches of a ladder rung: OLMo-core's ladder, Hägele
    et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
    """
    decay_steps = max(round(cfg.decay_fraction * total_steps), 1)
    return max(total_steps - decay_steps, cfg.warmup_steps)


def lr_at(step: int, total_steps: int, peak_lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step ``step`` (1-based) of ``total_steps``.

    Linear warmup to ``peak_lr``; then cosine to ``min_lr_ratio * peak_lr`` at the last step,
    or WSD: constant until ``decay_start`` (the last ``decay_fraction`` of the steps), then linear to the floor.
    """
    if not 1 <= step <= total_steps:
        raise ValueError(f"step {step} is outside [1, {total_steps}]")
    floor = cfg.min_lr_ratio * peak_lr
    if step <= cfg.warmup_steps:
        return peak_lr * step / cfg.warmup_steps
    if cfg.kind == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = (step - cfg.warmup_steps) / span
        return floor + (peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    stable_end = decay_start(total_steps, cfg)
    if step <= stable_end:
        return peak_lr
    progress = (step - stable_end) / max(total_steps - stable_end, 1)
    return peak_lr + (floor - peak_lr) * progress

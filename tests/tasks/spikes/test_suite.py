"""The spike suite's ZClip rule and its clipping, and published rules driving ladder's rollback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tasks.spikes.suite import RULES, ClipGradNorm, ZClipRule, run_one, scenarios, write_data

STEPS, ONSET = 40, 30  # past ZClip's warm-up of 25 steps; checkpoints every 10


def test_zclip_bounds_an_outlier_at_mean_plus_z_std_after_its_warmup_and_not_before() -> None:
    early = ZClipRule(warmup_steps=5)
    assert all(early.observe(step, 2.0, norm) is None for step, norm in enumerate([1.0, 1e6, 1.0, 1.0, 1.0], 1))
    rule = ZClipRule(warmup_steps=5)
    rng = np.random.default_rng(0)
    for step in range(1, 60):
        rule.observe(step, 2.0, 1.0 + 0.05 * rng.standard_normal())
    assert rule.mean is not None
    mean, std = rule.mean, math.sqrt(rule.var)
    assert rule.observe(60, 2.0, mean + 2.4 * std) is None
    mean, std = rule.mean, math.sqrt(rule.var)
    spike = rule.observe(61, 2.0, 1e6)
    assert spike is not None and spike.reason == "grad_norm" and spike.grad_norm == 1e6
    bound = mean + 2.5 * std
    assert spike.threshold == pytest.approx(bound)
    assert rule.mean == pytest.approx(0.97 * mean + 0.03 * bound), "the EMA takes the clipped norm, not the outlier"


def _stepper(clip: ClipGradNorm) -> Callable[[float], float]:
    """Steps of an optimizer that ``clip`` hooks: each takes the norm a backward left, returns the norm applied."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    trainer = SimpleNamespace(engine=SimpleNamespace(deepspeed=None, optimizer=optimizer), cfg=SimpleNamespace(grad_clip=0.0), step=0)
    clip.on_start(trainer)  # type: ignore[arg-type]

    def step(norm: float) -> float:
        weight.grad = torch.full((4,), norm / 2)
        optimizer.step()
        trainer.step += 1
        return float(weight.grad.norm())

    return step


def test_zclip_clips_the_gradient_before_the_optimizer_step() -> None:
    clip = ClipGradNorm(ZClipRule(warmup_steps=4), max_grad_norm=10.0)
    step = _stepper(clip)
    assert [step(n) for n in (1.0, 1.2, 0.8, 1.1)] == pytest.approx([1.0, 1.2, 0.8, 1.1])  # warm-up
    rule = clip.rule
    assert isinstance(rule, ZClipRule) and rule.mean is not None
    bound = rule.mean + 2.5 * math.sqrt(rule.var)
    assert step(20.0) == pytest.approx(bound, rel=1e-5) and bound < 2.0
    assert step(1.05) == pytest.approx(1.05)
    assert clip.fired == [5]
    clip.close()
    assert step(1e6) == pytest.approx(1e6), "closing removes the hook"


def test_zclip_applies_the_fixed_cap_from_the_first_step() -> None:
    step = _stepper(ClipGradNorm(ZClipRule(warmup_steps=4), max_grad_norm=0.5))
    assert [step(n) for n in (1.0, 0.3)] == pytest.approx([0.5, 0.3])


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_rule_restored_from_its_state_goes_on_as_the_original(name: str) -> None:
    """A rollback restores each rule from a checkpoint (JSON) with the weights."""
    rng = np.random.default_rng(1)
    values = [(2.0 + 0.05 * rng.standard_normal(), 1.0 + 0.05 * rng.standard_normal()) for _ in range(150)]
    values[121:128] = [(50.0, 1e3)] * 7  # seven outliers in a row: every rule fires on them
    rule, copy = RULES[name](), RULES[name]()
    for step, (loss, norm) in enumerate(values[:124], 1):
        rule.observe(step, loss, norm)
    copy.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    fired = [[(s.step, s.reason, s.threshold) for step, (loss, norm) in enumerate(values[124:], 125)
              if (s := r.observe(step, loss, norm)) is not None] for r in (rule, copy)]
    assert fired[0] and fired[0] == fired[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("spike-data"))


def _run(policy: str, scenario: str, data: Path, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    (chosen,) = [s for s in scenarios(ONSET) if s.name == scenario]
    row = run_one(chosen, policy, STEPS, data, work)
    return row, json.loads((work / f"{policy}-{scenario}" / "result.json").read_text())


@pytest.mark.parametrize(("rule", "scenario", "reason"), [("megatron", "nan-loss", "non-finite"), ("zclip", "huge-gradient", "grad_norm")])
def test_a_published_rule_drives_ladders_rollback(rule: str, scenario: str, reason: str, data: Path, tmp_path: Path) -> None:
    row, result = _run(f"{rule}+rollback", scenario, data, tmp_path)
    (event,) = result["spike_events"]
    assert event["spike"]["step"] == ONSET and event["spike"]["reason"] == reason
    assert event["rollback_step"] == 20 and event["batches_skipped"] > 0 and event["lr_scale"] < 1
    assert row["fired"] == [ONSET] and row["steps_lost"] == ONSET - 20
    assert result["steps"] == STEPS and math.isfinite(row["final_val_loss"])


def test_zclip_acts_in_the_loop_without_losing_a_step(data: Path, tmp_path: Path) -> None:
    row, result = _run("zclip", "huge-gradient", data, tmp_path)
    assert ONSET in row["fired"] and row["steps_lost"] == 0
    assert result["steps"] == STEPS and result["spike_events"] == []

"""Preference pairs from the policy's own samples: k responses per prompt, scored, best against worst.

Only prompts whose task has a reward function take part (``tasks.align.rewards``). A prompt
whose best and worst samples score the same (all right, all wrong, or one text), or nearly
the same (``min_reward_gap``), teaches no preference and is skipped, counted as a tie.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, Code, StageOutput, write_jsonl
from ladder.workspace import Workspace
from tasks.align.checkpoints import ModelRef, load_model
from tasks.align.config import SamplingConfig
from tasks.align.generate import generate
from tasks.align.instructions import InstructionSet, Item
from tasks.align.rewards import reward_for

STAGE = "preferences"
# The rewards that rank the samples split words with tasks.data.minhash.
CODE = Code(("tasks.align", "tasks.data.minhash", "models"), ("transformers", "torch", "peft"))
SAMPLES_JSONL = "samples.jsonl"
PAIRS_JSONL = "pairs.jsonl"
TIED = "tied"
NO_REWARD = "no_reward_function"


@dataclass(frozen=True)
class Scored:
    """One sampled response and its reward."""

    text: str
    reward: float


@dataclass(frozen=True)
class Pair:
    """A prompt with a preferred and a dispreferred response of the policy's own."""

    item_id: str
    task: str
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float

    @classmethod
    def from_json(cls, line: str) -> "Pair":
        return cls(**json.loads(line))


def make_pair(item: Item, samples: list[Scored], min_gap: float = 0.0) -> Pair | None:
    """The highest-reward sample against the lowest (the first of equals), or None when they tie.

    Rewards closer than ``min_gap`` count as a tie too: a line sharing one word more with
    the reference than another is noise, not a preference.
    """
    if len(samples) < 2:
        raise ValueError(f"{item.id}: a pair needs at least 2 samples, got {len(samples)}")
    best = max(samples, key=lambda s: s.reward)
    worst = min(samples, key=lambda s: s.reward)
    if best.reward - worst.reward <= min_gap:
        return None
    return Pair(item.id, item.task, item.messages, best.text, worst.text, best.reward, worst.reward)


def choose_prompts(items: list[Item], count: int | None, seed: int) -> tuple[list[Item], Counter]:
    """Items with a reward function, ``count`` of them drawn by ``seed`` (all when None), in their stored order."""
    drops: Counter = Counter()
    eligible = []
    for item in items:
        if reward_for(item.task) is None:
            drops[NO_REWARD] += 1
        else:
            eligible.append(item)
    if count is not None and count < len(eligible):
        keep = set(random.Random(seed).sample(range(len(eligible)), count))
        drops["unused"] += len(eligible) - count
        eligible = [item for i, item in enumerate(eligible) if i in keep]
    return eligible, drops


def build_preference_files(
    model_dir: Path, items: list[Item], cfg: SamplingConfig, count: int | None, seed: int, out: Path
) -> StageOutput:
    """Sample, score and pair; write every sample with its reward and the pairs."""
    prompts, drops = choose_prompts(items, count, seed)
    if not prompts:
        raise ValueError(f"none of {len(items)} instruction items has a reward function: enable a checkable task in align.instructions.tasks")
    model, tokenizer = load_model(model_dir)
    samples = generate(
        model, tokenizer, [item.messages for item in prompts], max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size, num_samples=cfg.samples_per_prompt, temperature=cfg.temperature, seed=seed,
    )
    pairs, records = [], []
    by_task: dict[str, Counter] = {}
    for item, texts in zip(prompts, samples, strict=True):
        reward = reward_for(item.task)
        scored = [Scored(text, reward(text, item.response)) for text in texts]  # type: ignore[misc]
        records.append({"item_id": item.id, "task": item.task, "reference": item.response, "samples": [asdict(s) for s in scored]})
        pair = make_pair(item, scored, cfg.min_reward_gap)
        tally = by_task.setdefault(item.task, Counter())
        tally["prompts"] += 1
        if pair is None:
            tally[TIED] += 1
            drops[TIED] += 1
        else:
            tally["pairs"] += 1
            pairs.append(pair)
    write_jsonl(out / SAMPLES_JSONL, records)
    write_jsonl(out / PAIRS_JSONL, map(asdict, pairs))
    rewards = [s["reward"] for r in records for s in r["samples"]]
    best = [max(s["reward"] for s in r["samples"]) for r in records]
    counts: dict[str, Any] = {"prompts": len(prompts), "pairs": len(pairs), "dropped": dict(sorted(drops.items())),
                              "by_task": {t: dict(c) for t, c in sorted(by_task.items())}}
    metrics = {"mean_sample_reward": sum(rewards) / len(rewards), "mean_best_of_k_reward": sum(best) / len(best),
               "pairs": len(pairs)}
    return StageOutput(counts=counts, metrics=metrics)


@dataclass(frozen=True)
class PreferenceSet:
    """Pairs sampled from one policy on one split of the instruction items."""

    artifact: Artifact

    @property
    def version(self) -> str:
        return self.artifact.version

    def pairs(self) -> list[Pair]:
        return [Pair.from_json(line) for line in self.artifact.file(PAIRS_JSONL).read_text(encoding="utf-8").splitlines()]


@task(name="sample-preferences", cache_policy=NO_CACHE)
def sample_preferences(
    ws: Workspace, cfg: SamplingConfig, policy: ModelRef, instructions: InstructionSet, split: str, iteration: int = 1
) -> PreferenceSet:
    """Pairs from ``policy``'s samples: on ``cfg.prompts`` training prompts, or on every held-out one.

    Each DPO ``iteration`` draws other training prompts and other samples (the seed moves with it).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown instruction split {split!r}: use 'train' or 'heldout'")
    store = ws.store()
    count = cfg.prompts if split == "train" else None
    seed = cfg.seed + iteration - 1
    items = instructions.items(split)
    inputs = {"policy": policy.version, "instructions": instructions.version, "split": split, "iteration": str(iteration)}
    artifact, _ = store.run_stage(
        STAGE, cfg, inputs, lambda out: build_preference_files(policy.model_dir, items, cfg, count, seed, out), code=CODE
    )
    return PreferenceSet(artifact)

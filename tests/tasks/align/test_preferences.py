"""Preference pairs: the best sample against the worst, ties skipped, prompts and samples seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.align.generate import generate
from tasks.align.instructions import Item
from tasks.align.preferences import NO_REWARD, Scored, choose_prompts, make_pair


def _item(task: str = "work", index: int = 0) -> Item:
    return Item(f"{task}:doc@{index}", task, 0, [{"role": "user", "content": f"Which work? {index}"}], "B", "doc")


def test_the_pair_is_the_best_sample_against_the_worst() -> None:
    samples = [Scored("C", 0.0), Scored("B", 1.0), Scored("the b", 1.0), Scored("A", 0.0)]
    pair = make_pair(_item(), samples)
    assert (pair.chosen, pair.rejected) == ("B", "C")  # the first of equals on either side
    assert (pair.chosen_reward, pair.rejected_reward) == (1.0, 0.0)
    graded = make_pair(_item("continue"), [Scored("x", 0.2), Scored("y", 0.9), Scored("z", 0.5)])
    assert (graded.chosen, graded.rejected) == ("y", "x")


@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0], [0.0, 0.0], [0.4, 0.4]])
def test_samples_that_tie_make_no_pair(rewards: list[float]) -> None:
    assert make_pair(_item(), [Scored(f"s{i}", r) for i, r in enumerate(rewards)]) is None


def test_rewards_closer_than_the_minimum_gap_count_as_a_tie() -> None:
    samples = [Scored("x", 0.1), Scored("y", 0.3)]
    assert make_pair(_item("continue"), samples, min_gap=0.2) is None
    assert make_pair(_item("continue"), samples, min_gap=0.1).chosen == "y"


def test_a_pair_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        make_pair(_item(), [Scored("B", 1.0)])


def test_prompts_are_drawn_by_seed_among_tasks_with_a_reward() -> None:
    items = [_item("work", i) for i in range(10)] + [_item("user", 10)]
    chosen, drops = choose_prompts(items, 4, seed=3)
    again, _ = choose_prompts(items, 4, seed=3)
    assert chosen == again and len(chosen) == 4 and all(i.task == "work" for i in chosen)
    assert chosen == sorted(chosen, key=items.index)
    assert drops == {NO_REWARD: 1, "unused": 6}
    everything, _ = choose_prompts(items, None, seed=3)
    assert len(everything) == 10


def test_sampling_is_seeded_and_greedy_is_deterministic(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [_item("work", i).messages for i in range(3)]
    kwargs = {"max_new_tokens": 6, "batch_size": 2}
    first = generate(model, tokenizer, prompts, num_samples=3, temperature=1.0, seed=7, **kwargs)
    assert first == generate(model, tokenizer, prompts, num_samples=3, temperature=1.0, seed=7, **kwargs)
    assert [len(s) for s in first] == [3, 3, 3]
    assert first != generate(model, tokenizer, prompts, num_samples=3, temperature=1.0, seed=8, **kwargs)
    greedy = generate(model, tokenizer, prompts, **kwargs)
    assert greedy == generate(model, tokenizer, prompts, **kwargs) and all(len(g) == 1 for g in greedy)

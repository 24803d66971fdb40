"""Rule-based rewards for the instruction tasks, looked up by task name; other tasks plug in with ``register``.

A reward scores a response against the item's reference response, from 0 (wrong) to 1
(right). Words are compared as the data stage's contamination and dedup checks see them
(``tasks.data.minhash.words``: casefolded, punctuation removed), so "B." and "b" agree.
Checkable answers (a letter, a name) score by exact match; free text (a line of verse)
by token-overlap F1, so that a nearly right line beats a wrong one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tasks.data.minhash import words

Reward = Callable[[str, str], float]  # (response, reference) -> score in [0, 1]

REWARDS: dict[str, Reward] = {}


def register(*task_names: str) -> Callable[[Reward], Reward]:
    """Decorator: use this function as the reward of ``task_names`` (replacing any earlier one)."""

    def add(fn: Reward) -> Reward:
        for name in task_names:
            REWARDS[name] = fn
        return fn

    return add


def reward_for(task_name: str) -> Reward | None:
    """The reward function of a task, or None when its answers cannot be checked (e.g. user-supplied items)."""
    return REWARDS.get(task_name)


def exact(response: str, reference: str) -> bool:
    """True when the response has exactly the reference's words (case and punctuation aside)."""
    return words(response) == words(reference)


@register("next_passage", "work", "author")
def exact_match(response: str, reference: str) -> float:
    """1 for the right letter or name, else 0."""
    return float(exact(response, reference))


@register("continue", "missing_line")
def token_f1(response: str, reference: str) -> float:
    """F1 of the word multisets (SQuAD's answer F1); 1 exactly when the words match in any order."""
    got, want = Counter(words(response)), Counter(words(reference))
    common = sum((got & want).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)

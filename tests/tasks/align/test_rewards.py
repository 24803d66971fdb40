"""Rule-based rewards: exact match for checkable answers, token F1 for lines, a registry by task name."""

from __future__ import annotations

import pytest

from tasks.align.rewards import REWARDS, exact_match, register, reward_for, token_f1


def test_exact_match_ignores_case_and_punctuation_only() -> None:
    assert exact_match("B.", "b") == 1.0
    assert exact_match(" Milton ", "milton") == 1.0
    assert exact_match("B or C", "B") == 0.0


def test_token_f1_gives_partial_credit_for_a_nearly_right_line() -> None:
    assert token_f1("Serpent eden apple garden", "serpent, eden apple garden") == 1.0
    assert token_f1("serpent eden", "serpent eden apple garden") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("witch dagger", "serpent eden") == 0.0
    assert token_f1("", "serpent eden") == 0.0


def test_rewards_are_looked_up_by_task_and_plug_in_by_name() -> None:
    assert reward_for("author") is exact_match and reward_for("continue") is token_f1
    assert reward_for("user") is None

    @register("rhyme")
    def ends_alike(response: str, reference: str) -> float:
        return float(response[-2:] == reference[-2:])

    try:
        assert reward_for("rhyme") is ends_alike
    finally:
        del REWARDS["rhyme"]

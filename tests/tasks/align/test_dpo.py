"""DPO's implicit reward margin: zero against itself, and it changes sign with the pair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tasks.align.dpo import implicit_reward_margins, preference_rows
from tasks.align.preferences import Pair

PAIRS = [
    Pair("work:a@0", "work", [{"role": "user", "content": "Which work? A. Comus B. Lycidas"}], "B", "A", 1.0, 0.0),
    Pair("continue:b@1", "continue", [{"role": "user", "content": "Continue.\n\nSerpent eden"}], "Apple garden eve", "Witch", 0.7, 0.0),
]


def test_the_margin_is_zero_against_the_policy_itself(model_dir: Path) -> None:
    assert implicit_reward_margins(model_dir, model_dir, PAIRS, beta=0.1, batch_size=2) == pytest.approx([0.0, 0.0], abs=1e-9)


def test_the_margin_changes_sign_with_the_pair(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for param in model.parameters():
        param.data.mul_(1.5)  # any other model serves as the policy
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(other)
    swapped = [replace(p, chosen=p.rejected, rejected=p.chosen) for p in PAIRS]
    margins = implicit_reward_margins(other, model_dir, PAIRS, beta=0.5, batch_size=1)
    assert all(m != 0 for m in margins)
    assert implicit_reward_margins(other, model_dir, swapped, beta=0.5, batch_size=2) == pytest.approx([-m for m in margins], rel=1e-5)


def test_pairs_become_trls_conversational_preference_rows() -> None:
    (row, _) = preference_rows(PAIRS)
    assert row == {
        "prompt": PAIRS[0].messages,
        "chosen": [{"role": "assistant", "content": "B"}],
        "rejected": [{"role": "assistant", "content": "A"}],
    }

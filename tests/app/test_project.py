"""The project's config tree loads its named profiles from ``app/profiles/``."""

from __future__ import annotations

import pytest

from app.project import ProjectConfig
from ladder.config import load


def test_the_tiny_profile_loads_by_name_with_overrides() -> None:
    cfg = load(ProjectConfig, "tiny", ["train.max_tokens=1000"])
    assert cfg.train.max_tokens == 1000
    assert cfg.train.target_params == 1.6e5  # from app/profiles/tiny.yaml, not a default


def test_an_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'no-such-profile': use one of \['tiny', 'tiny-branches'\]"):
        load(ProjectConfig, "no-such-profile")

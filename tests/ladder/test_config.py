from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from ladder.config import Section, build, content_hash, load, load_tree, parse_override


class Inner(Section):
    lr: float = Field(1e-3, description="learning rate")
    sizes: list[int] = Field(default_factory=lambda: [1, 2], description="sizes")


class Outer(Section):
    inner: Inner = Field(default_factory=Inner, description="inner section")
    name: str = Field("x", description="a name")


def test_dotted_override_parses_yaml_values():
    assert parse_override("inner.lr=3e-4") == (["inner", "lr"], 3e-4)
    assert parse_override("inner.sizes=[4, 8]") == (["inner", "sizes"], [4, 8])
    with pytest.raises(ValueError, match="dotted.key=value"):
        parse_override("inner.lr")


def test_unknown_keys_fail_with_their_path():
    with pytest.raises(ValueError, match="inner.lrr"):
        build(Outer, {"inner": {"lrr": 1}})


def test_hash_changes_with_values_and_not_with_key_order():
    a = build(Outer, {"inner": {"lr": 0.1, "sizes": [1]}, "name": "a"})
    b = build(Outer, {"name": "a", "inner": {"sizes": [1], "lr": 0.1}})
    assert a.hash() == b.hash()
    assert a.hash() != build(Outer, {"inner": {"lr": 0.2}}).hash()
    assert content_hash({"x": 1}) == content_hash({"x": 1})


def test_profile_tree_with_overrides(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("inner:\n  lr: 0.5\n")
    tree = load_tree(str(profile), ["inner.sizes=[3]", "name=y"])
    cfg = build(Outer, tree)
    assert (cfg.inner.lr, cfg.inner.sizes, cfg.name) == (0.5, [3], "y")


def test_named_profiles_are_the_root_sections_own(tmp_path):
    (tmp_path / "small.yaml").write_text("inner:\n  lr: 0.5\n")

    class Named(Outer):
        profiles_dir: ClassVar[Path | None] = tmp_path

    cfg = load(Named, "small", ["name=y"])
    assert (cfg.inner.lr, cfg.name) == (0.5, "y")
    with pytest.raises(ValueError, match=r"unknown profile 'no-such-profile': use one of \['small'\]"):
        load(Named, "no-such-profile")
    with pytest.raises(ValueError, match="unknown profile 'small'"):
        load(Outer, "small")  # a tree without profiles_dir takes YAML paths only

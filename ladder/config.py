"""Typed configuration: per-component sections, YAML profiles, dotted overrides, stable hashes.

Each stage owns its config section (defined beside the stage's tasks). A profile is a YAML
file that overrides section defaults; the command line overrides the profile with dotted
keys (``train.lr=3e-4``). Unknown keys are errors, so a typo never silently falls back to a
default. Named profiles belong to the application whose config tree they fill, so the tree's
root section says where they live (``Section.profiles_dir``); this module knows none of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, serialisable to YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profiles_dir: ClassVar[Path | None] = None
    """Where the named profiles (``<name>.yaml``) of a root section live; None: profiles are YAML paths only."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def hash(self) -> str:
        """Content hash of the resolved config; it versions the stage that consumes it."""
        return content_hash(self.to_dict())


def content_hash(obj: Any) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value), the value parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form dotted.key=value (e.g. train.lr=3e-4)")
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; a user typing it means a number.
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def profile_path(profile: str, profiles_dir: Path | None = None) -> Path:
    """A profile name (``tiny``, a file of ``profiles_dir``) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"} and candidate.exists():
        return candidate
    if profiles_dir is None or not (profiles_dir / f"{profile}.yaml").exists():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml")) if profiles_dir else []
        raise ValueError(f"unknown profile {profile!r}: use one of {known} or a path to a YAML file")
    return profiles_dir / f"{profile}.yaml"


def load_tree(
    profile: str, overrides: list[str] | tuple[str, ...] = (), profiles_dir: Path | None = None
) -> dict[str, Any]:
    """The raw tree of a profile (a name in ``profiles_dir`` or a YAML path) with the dotted overrides
    applied, not yet validated."""
    path = profile_path(profile, profiles_dir)
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"profile {path} must be a YAML mapping of sections")
    for item in overrides:
        keys, value = parse_override(item)
        _set_dotted(tree, keys, value)
    return tree


def build(cls: type[S], tree: dict[str, Any], source: str = "config") -> S:
    """Validate ``tree`` into ``cls``; errors name every bad key so the user can fix them at once."""
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"invalid {source}: {problems}") from None


def load(cls: type[S], profile: str, overrides: list[str] | tuple[str, ...] = ()) -> S:
    """Load a profile (a name in ``cls.profiles_dir`` or a YAML path) into ``cls`` with dotted overrides applied."""
    return build(cls, load_tree(profile, overrides, cls.profiles_dir), source=f"profile {profile!r}")

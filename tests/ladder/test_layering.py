"""The framework imports none of its tenants: ``ladder/`` never imports the stages or the app.

Stages (``tasks/``, ``models/``), flows (``flows/``) and the application (``app/``) build on
``ladder``; an import the other way would tie the framework to one project again. Every
import statement counts, those inside functions and ``TYPE_CHECKING`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ladder

TENANTS = frozenset({"tasks", "flows", "models", "app"})


def imported_packages(source: str) -> set[str]:
    """The top-level packages that ``source`` imports by absolute name (a relative import stays in its package)."""
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.partition(".")[0])
    return packages


def test_imports_are_found_wherever_they_stand() -> None:
    source = (
        "import flows.pipeline as pipeline\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.project import ProjectConfig\n"
        "def f():\n    from tasks.train import loop\n"
        "from . import config\n"
    )
    assert imported_packages(source) == {"flows", "typing", "app", "tasks"}


def test_the_framework_imports_no_stage_flow_model_or_app() -> None:
    root = Path(ladder.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 1, f"no modules found under {root}"
    upward = {
        str(path.relative_to(root.parent)): sorted(imported_packages(path.read_text()) & TENANTS) for path in modules
    }
    assert {path: names for path, names in upward.items() if names} == {}

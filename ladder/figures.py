"""Figures as stages keep and show them: a PNG file, and the same PNG inlined in a Prefect markdown report."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_png(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def png_markdown(path: Path) -> str:
    """A PNG inlined in markdown: Prefect's image artifacts take a URL, and these live on local disk."""
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

"""Stage-by-stage progress of a pipeline run, shown by whoever is watching.

Flows announce stage starts and ends here, and the time between them is measured here; the
command line installs a rich display, and
with no display installed (a deployment run by a worker) the announcements are no-ops: the
Prefect UI shows the same progress there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Display(Protocol):
    def start(self, stage: str) -> None: ...

    def finish(self, stage: str, summary: dict[str, Any], seconds: float) -> None: ...


_display: Display | None = None
_started: dict[str, float] = {}


@contextmanager
def showing(display: Display) -> Iterator[None]:
    """Route stage announcements to ``display`` for the duration of the block."""
    global _display
    previous, _display = _display, display
    try:
        yield
    finally:
        _display = previous


def start(stage: str) -> None:
    _started[stage] = time.perf_counter()
    if _display is not None:
        _display.start(stage)


def finish(stage: str, summary: dict[str, Any]) -> None:
    """The end of ``stage``, with what it reports; its seconds are counted from its ``start``."""
    seconds = time.perf_counter() - _started.pop(stage)
    if _display is not None:
        _display.finish(stage, summary, seconds)

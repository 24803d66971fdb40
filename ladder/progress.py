"""Stage-by-stage progress of a pipeline run, shown by whoever is watching.

Flows announce stage starts and ends here, and the time between them is measured here; the
command line installs a rich display, and
with no display installed (a deployment run by a worker) the announcements are no-ops: the
Prefect UI shows the same progress there. ``logged_to`` sends everything else a run prints
to a log file, so the person watching sees the progress and the summary.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol


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


@contextmanager
def logged_to(log_file: Path) -> Iterator[IO[str]]:
    """Send the process's stdout and stderr to ``log_file`` for the block; yields the terminal.

    At the file-descriptor level, not by swapping ``sys.stdout``: Prefect's and MLflow's log
    handlers hold the streams they found at import, and the training processes, lm-eval and
    the progress bars of transformers write to inherited descriptors 1 and 2.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with log_file.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            terminal.close()

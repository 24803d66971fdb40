"""SIGTERM and SIGINT stop the data stage within seconds, and leave what earlier runs made whole.

What is left whole comes from the stage's own exits: the artifact is built in a temporary directory
renamed into place only when complete (``ArtifactStore.run_stage``), the shards' scratch directory is
removed on every exit (``curate.build_dataset``), the local Dask cluster's workers are stopped at once
(``shard.run_shards``) and ``data/`` is replaced by a complete copy renamed into place
(``version.materialize``). A run stopped between that rename and ``dvc add`` leaves the new dataset in
``data/`` and the old md5 in ``data.dvc``: readers check one against the other (``dataset.resolve_dataset``)
and the next run adds it. This module makes the signals take those exits promptly and end the process
cleanly:

- the signal raises ``Stopped`` in the main thread, a ``SystemExit``: no ``except Exception`` takes it for
  a failure to retry or report, and the interpreter's exit handlers still run (Prefect's own SIGTERM
  handling kills the process with the signal once the flow run is marked, which skips them and leaves
  its temporary API server running with no parent);
- a second signal while the stage is stopping is ignored, so that it cannot cut the clean-up short and
  leave worker processes or half a directory behind;
- the last word says what was stopped and what was kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """The stage was stopped by a signal; its code is a shell's status for a process the signal ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


@contextmanager
def stop_on_signals(stage: str) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise ``Stopped`` (see the module docstring).

    Signals can only be handled in the main thread: elsewhere the block runs as it is. A signal ignored
    when the block starts (SIGINT under ``nohup``, or in a shell's background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[signal.Signals] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if stopping:
            return
        stopping.append(signal.Signals(signum))
        # os.write, not print: the signal may have interrupted a write to sys.stderr, which print would re-enter.
        os.write(sys.stderr.fileno(), f"{stage}: {stopping[0].name} received, stopping\n".encode())
        raise Stopped(signum)

    previous: dict[int, Any] = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # None: a handler set outside Python
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    except BaseException:
        if stopping:
            print(f"{stage} stopped by {stopping[0].name}: its unfinished build was removed and the output of "
                  "earlier runs left whole; run it again to finish", file=sys.stderr, flush=True)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

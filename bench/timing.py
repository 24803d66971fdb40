"""Timing shared by the benchmarks: CPU seconds, the best of a few repeats.

CPU time of the process, not wall time: these machines are shared and noisy, and a ratio of
two CPU times measured in the same run is what the benchmarks report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best_time(fn: Callable[..., T], *args: object, repeat: int = 2) -> tuple[float, T]:
    """The least CPU seconds of ``repeat`` calls of ``fn(*args)``, and its (last) result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        result = fn(*args)
        best = min(best, time.process_time() - start)
    return best, result

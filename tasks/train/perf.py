"""Throughput against the machine's own matmul rate: the denominator of MFU, measured, not looked up.

A datasheet peak is meaningless on a CPU and optimistic on a GPU; the rate of a large
square matmul in the training dtype, measured in the same process, is what the model's
FLOPs could at best run at here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# Matmuls queued between timer reads, so the device is never idle waiting for the host.
REPS_PER_SYNC = 2


def matmul_flops(
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    seconds: float = 0.3,
    trials: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` on ``device``: the best of ``trials`` bursts of
    ``seconds / trials`` each, so a neighbour busy during one burst does not lower the peak.
    ``clock=time.process_time`` gives FLOP per CPU second, the peak for rates in CPU time."""
    device = torch.device(device)
    n = 8192 if device.type == "cuda" else 2048
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    (a @ b).sum().item()  # warm up kernels and caches
    best = 0.0
    for _ in range(trials):
        reps = 0
        start = clock()
        while clock() - start < seconds / trials:
            for _ in range(REPS_PER_SYNC):
                torch.mm(a, b)
            reps += REPS_PER_SYNC
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        best = max(best, 2.0 * n**3 * reps / (clock() - start))
    return best


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    return flops_per_token * tokens_per_s / peak_flops

"""Throughput against the machine's own matmul rate: the denominator of MFU, measured, not looked up.

A datasheet peak is meaningless on a CPU and optimistic on a GPU; the rate of a large
square matmul in the training dtype, measured in the same process, is what the model's
FLOPs could at best run at here.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

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


def peak_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ladder" / "matmul_peak.json"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{models[0] if models else platform.processor()} x{os.cpu_count()}"


def machine_peak(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """``matmul_flops`` of this machine, measured once and remembered in ``peak_cache()``.

    Every training process needs the peak for its MFU, and measuring it took 1.2 s of the 10 s a
    tiny run costs (a ladder's rungs, the tests). The key holds the host, the device, the dtype,
    the torch threads and torch's version: any of them changed, the peak is measured again.
    """
    device = torch.device(device)
    key = f"{platform.node()}|{_device_name(device)}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = peak_cache()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = matmul_flops(dtype, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole and renamed: processes measuring at once each leave a complete file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return known[key]


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    return flops_per_token * tokens_per_s / peak_flops

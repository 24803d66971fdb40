"""The MFU denominator: this machine's matmul peak, measured once per setting and remembered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.train import perf


def test_the_peak_is_measured_once_per_dtype_and_read_back_after(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured: list[torch.dtype] = []
    matmul_flops = perf.matmul_flops

    def measure(dtype: torch.dtype, device: torch.device) -> float:
        measured.append(dtype)
        return matmul_flops(dtype, device, seconds=0.03)

    monkeypatch.setattr(perf, "matmul_flops", measure)
    fp32 = perf.machine_peak(torch.float32)
    assert fp32 > 0 and perf.peak_cache().is_relative_to(tmp_path)
    assert perf.machine_peak(torch.float32) == fp32  # read back: measured once
    perf.machine_peak(torch.bfloat16)
    assert measured == [torch.float32, torch.bfloat16]

    perf.peak_cache().write_text("{not json")  # a torn or foreign file is measured over, not fatal
    assert perf.machine_peak(torch.float32) > 0 and len(measured) == 3

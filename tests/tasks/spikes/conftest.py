"""The suite's runs train in-process on one CPU thread; the process-group variables they set are undone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from unittest import mock

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        yield
    torch.set_num_threads(threads)

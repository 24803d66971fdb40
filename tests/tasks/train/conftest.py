"""Training tests run on one CPU thread: fast at this size and immune to cores shared with other jobs.

In-process runs make a one-process gloo group that lives on for the session (DeepSpeed caches
its groups, so it cannot be torn down and made again); the variables it sets are undone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from train_fixtures import Continued, restored_environ, write_continued, write_shards


@pytest.fixture(scope="session")
def shards_root(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("train-shards"))


@pytest.fixture
def continued(tmp_path: Path) -> Continued:
    return write_continued(tmp_path)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread here and in child processes, for each module (and its module fixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with restored_environ() as environ:
        environ["OMP_NUM_THREADS"] = "1"
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    with restored_environ():
        yield

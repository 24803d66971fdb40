"""A training process that SIGKILLs itself at one chosen point: ``python kill_at.py POINT N LAUNCH_ARGS...``.

The points are where a real crash hurts most and an outside timer could not aim:

- ``step``: right after optimizer step ``N`` is trained (before its callbacks run);
- ``checkpoint``: in the middle of this process's ``N``-th checkpoint write (some files written, no checksums);
- ``discard``: in the ``N``-th rollback of this process, once it has deleted the suspect checkpoints
  and before its ledger entry commits it;
- ``ledger``: right after the ``N``-th rollback has written the spike ledger;
- ``rollback``: right after the ``N``-th rollback of this process is complete.

Anything else runs as ``python -m tasks.train.launch`` would.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from tasks.train import checkpoint, launch, loop


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after_nth_call(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
    calls = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        out = fn(*args, **kwargs)
        calls += 1
        if calls == n:
            _die()
        return out

    return wrapped


def _arm(point: str, n: int) -> None:
    if point == "step":
        train_step = loop.Trainer._train_step

        def step_then_die(self: loop.Trainer, batches: Any) -> Any:
            out = train_step(self, batches)
            if self.step == n:
                _die()
            return out

        loop.Trainer._train_step = step_then_die
    elif point == "checkpoint":
        # The RNG state is saved after the optimizer's file and before the model's and the checksums.
        checkpoint._rng_state = _after_nth_call(checkpoint._rng_state, n)
    elif point == "rollback":
        loop.Trainer._rollback = _after_nth_call(loop.Trainer._rollback, n)
    elif point == "discard":
        checkpoint.CheckpointStore.discard_after = _after_nth_call(checkpoint.CheckpointStore.discard_after, n)
    elif point == "ledger":
        checkpoint.CheckpointStore.write_ledger = _after_nth_call(checkpoint.CheckpointStore.write_ledger, n)
    else:
        raise ValueError(f"unknown kill point {point!r}")


if __name__ == "__main__":
    _arm(sys.argv[1], int(sys.argv[2]))
    sys.exit(launch.main(sys.argv[3:]))

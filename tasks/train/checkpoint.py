"""Atomic, verifiable checkpoints with retention, and the run's ledger of spike events.

A checkpoint is a directory ``ckpt-<seq>-step-<step>/`` holding

- ``model.safetensors``: the whole model (written by rank 0);
- ``optimizer-rank<r>.pt``: AdamW's state, one file per ZeRO partition (one file without
  ZeRO), tensors and numbers only, read back with ``torch.load(weights_only=True)``;
- ``rng-rank<r>.pt`` and ``rank-<r>.json``: each process's RNG and loader state;
- ``trainer.json``: step, spike-guard window, run counters, config hash, world layout;
- ``checksums.json``: CRC-32 and size of every other file, written last;
- ``known_good`` (empty, added later): the step after this checkpoint passed the spike guard.

A checkpoint holds the weights *after* its step's update, which no loss has measured yet;
only the next step's loss does. So a checkpoint becomes known-good when that next step
passes the guard, and a rollback returns to the newest known-good one, never to a state
that may be the spike's cause, and deletes the checkpoints after it: the newest checkpoint,
the one a resume takes, is then never one the guard has found suspect.

Every process writes into ``.tmp-<name>/``; rank 0 fsyncs the files, writes the checksums,
renames the directory into place and fsyncs the parent. A crash at any point leaves either
the previous checkpoints untouched or a temporary directory no reader looks at. Resume takes
the newest checkpoint whose files match their checksums, skipping (and reporting) any other.

A run can start from another run's checkpoint (``start_branch``): a copy of it becomes the
run's first checkpoint, tagged with the run's config, and the resume goes on from there. A
ladder rung's WSD decay branches start so from its stable run, which keeps a checkpoint at each
branch's decay start (``checkpoint.keep_steps``) past the pruning.

``ledger.json`` beside the checkpoints records every spike event and the batch ranges it
skipped. It lives outside any one checkpoint because a rollback returns to a checkpoint
written before the event: a later resume must still skip those batches and count the retry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.serialization

from tasks.train.config import CheckpointConfig, TrainConfig
from tasks.train.data import merge_ranges
from tasks.train.engine import Dist
from tasks.train.schedule import lr_at

if TYPE_CHECKING:
    from tasks.train.engine import TrainEngine

log = logging.getLogger(__name__)

MODEL = "model.safetensors"
TRAINER = "trainer.json"
CHECKSUMS = "checksums.json"
KNOWN_GOOD = "known_good"
LEDGER = "ledger.json"
# torch.save's own CRC-32 of every record in its zip: checksums.json covers the whole file already.
UNCHECKED_TORCH_SAVE = {"save.compute_crc32": False}
_NAME = re.compile(r"^ckpt-(\d{6})-step-(\d{7})$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory (complete: renamed into place; verified: see ``verify``)."""

    path: Path
    seq: int
    step: int

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / TRAINER).read_text())

    @property
    def known_good(self) -> bool:
        return (self.path / KNOWN_GOOD).exists()


def file_crc32(path: Path) -> str:
    """The CRC-32 (8 hex digits) of a file's bytes, read in 1 MiB blocks.

    A checkpoint's checksum is there to catch torn writes and flipped bytes, which CRC-32 (what
    zip files and torch.save's records carry) catches, at 7 GB/s on one core against sha256's 2:
    sha256 of bench/train.py's larger checkpoint (160 MB, 90 ms) cost more than writing it.
    """
    crc = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file, fsync and rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def checkpoints(root: Path) -> list[Checkpoint]:
    """The renamed-into-place checkpoints under ``root`` (none when it does not exist), oldest first, not yet verified."""
    found = []
    for path in root.iterdir() if root.exists() else ():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append(Checkpoint(path, int(match[1]), int(match[2])))
    return sorted(found, key=lambda c: c.seq)


def _barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed

        torch.distributed.barrier()


class CheckpointStore:
    """The checkpoints of one run, under ``root``; ``save`` is collective (every rank calls it)."""

    def __init__(self, root: Path, dist: Dist) -> None:
        self.root = root
        self.dist = dist
        root.mkdir(parents=True, exist_ok=True)

    def all(self) -> list[Checkpoint]:
        """Renamed-into-place checkpoints, oldest first (not yet verified)."""
        return checkpoints(self.root)

    @staticmethod
    def verify(ckpt: Checkpoint) -> str | None:
        """None when every file matches its checksum, else what is wrong."""
        sums_path = ckpt.path / CHECKSUMS
        if not sums_path.exists():
            return "no checksums.json"
        try:
            sums = json.loads(sums_path.read_text())
        except json.JSONDecodeError:
            return "checksums.json is not valid JSON"
        for name, expected in sorted(sums.items()):
            path = ckpt.path / name
            if not path.exists():
                return f"{name} is missing"
            if path.stat().st_size != expected["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']} (truncated?)"
            if file_crc32(path) != expected.get("crc32"):
                return f"{name} does not match its crc32"
        return None

    def newest(self, known_good: bool = False) -> tuple[Checkpoint | None, list[dict[str, Any]]]:
        """The newest checkpoint that verifies (and is known-good, if asked) and the ones skipped, with why."""
        skipped = []
        for ckpt in reversed(self.all()):
            problem = self.verify(ckpt)
            if problem is None and known_good and not ckpt.known_good:
                continue
            if problem is None:
                return ckpt, skipped
            log.warning("skipping checkpoint %s: %s", ckpt.path.name, problem)
            skipped.append({"checkpoint": ckpt.path.name, "problem": problem})
        return None, skipped

    def save(
        self,
        step: int,
        engine: TrainEngine,
        rank_state: dict[str, Any],
        trainer_state: dict[str, Any],
        retention: CheckpointConfig,
    ) -> Checkpoint:
        """Write a checkpoint atomically, then prune to ``retention.keep_last`` plus the newest known-good and
        those at ``retention.keep_steps``."""
        existing = self.all()
        seq = existing[-1].seq + 1 if existing else 0
        name = f"ckpt-{seq:06d}-step-{step:07d}"
        tmp = self.root / f".tmp-{name}"
        weights = engine.full_weights()  # collective under ZeRO-3
        rank = self.dist.rank
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier(self.dist)
        with torch.utils.serialization.config.patch(UNCHECKED_TORCH_SAVE):
            if engine.cfg.zero_stage or self.dist.is_main:
                torch.save(engine.optimizer_state(), tmp / f"optimizer-rank{rank}.pt")
            torch.save(_rng_state(), tmp / f"rng-rank{rank}.pt")
        (tmp / f"rank-{rank}.json").write_text(json.dumps(rank_state, sort_keys=True))
        if self.dist.is_main:
            from safetensors.torch import save_file

            save_file(weights, tmp / MODEL)
            (tmp / TRAINER).write_text(json.dumps({**trainer_state, "step": step, "seq": seq}, indent=2, sort_keys=True))
        _barrier(self.dist)
        final = self.root / name
        if self.dist.is_main:
            _seal(tmp, final)
            self._prune(retention)
        _barrier(self.dist)
        return Checkpoint(final, seq, step)

    def _prune(self, retention: CheckpointConfig) -> None:
        ckpts = self.all()
        keep = {c.seq for c in ckpts[-retention.keep_last:]}
        keep |= {c.seq for c in ckpts if c.step in retention.keep_steps}
        good = [c for c in ckpts if c.known_good]
        if good:
            keep.add(good[-1].seq)
        for ckpt in ckpts:
            if ckpt.seq not in keep:
                shutil.rmtree(ckpt.path)
        for leftover in self.root.glob(".tmp-ckpt-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def discard_after(self, ckpt: Checkpoint) -> None:
        """Delete every checkpoint written after ``ckpt``, which a rollback returns to (collective; rank 0 deletes).

        They hold states the rollback found suspect (the spike's cause, or its aftermath), so a
        resume must never pick them. Each is first renamed to a temporary name no reader looks
        at, then deleted: a crash midway leaves none of them half-removed under its own name.
        """
        if self.dist.is_main:
            hidden = []
            for newer in self.all():
                if newer.seq > ckpt.seq:
                    hidden.append(self.root / f".tmp-{newer.path.name}")
                    os.rename(newer.path, hidden[-1])
                    log.info("rollback to %s: deleted the newer checkpoint %s", ckpt.path.name, newer.path.name)
            fsync_path(self.root)
            for path in hidden:
                shutil.rmtree(path)
        # Every rank numbers its next checkpoint from the directory listing: all must see this one.
        _barrier(self.dist)

    def mark_known_good(self, ckpt: Checkpoint) -> None:
        """Record that the step after ``ckpt`` passed the spike guard (rank 0 writes)."""
        if self.dist.is_main and ckpt.path.exists():
            (ckpt.path / KNOWN_GOOD).touch()
            fsync_path(ckpt.path)

    def load(self, ckpt: Checkpoint, engine: TrainEngine) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore weights, optimizer and RNG into ``engine``; returns (this rank's state, trainer state)."""
        from safetensors.torch import load_file

        meta = ckpt.meta
        layout = {"world_size": self.dist.world_size, "zero_stage": engine.cfg.zero_stage}
        saved = {key: meta[key] for key in layout}
        if saved != layout:
            raise ValueError(
                f"checkpoint {ckpt.path} was written with {saved}, this run has {layout}: resume with the "
                "same number of processes and ZeRO stage, or start a new run directory"
            )
        rank = self.dist.rank
        engine.load_weights(load_file(ckpt.path / MODEL))
        optimizer_file = ckpt.path / f"optimizer-rank{rank if engine.cfg.zero_stage else 0}.pt"
        engine.load_optimizer_state(torch.load(optimizer_file, weights_only=True))
        _set_rng_state(torch.load(ckpt.path / f"rng-rank{rank}.pt", weights_only=True))
        return json.loads((ckpt.path / f"rank-{rank}.json").read_text()), meta

    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER

    def read_ledger(self) -> dict[str, Any]:
        """Spike events, skipped batch ranges and fired faults so far (empty for a new run)."""
        if not self.ledger_path.exists():
            return {"events": [], "skips": [], "fired_faults": []}
        return json.loads(self.ledger_path.read_text())

    def write_ledger(self, ledger: dict[str, Any]) -> None:
        if self.dist.is_main:
            write_json_atomic(self.ledger_path, ledger)


def _seal(tmp: Path, final: Path) -> None:
    """Checksum every file of ``tmp``, then rename it to ``final``: a reader sees the whole checkpoint or none."""
    sums = {}
    for path in sorted(tmp.iterdir()):
        fsync_path(path)
        sums[path.name] = {"crc32": file_crc32(path), "bytes": path.stat().st_size}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True))
    fsync_path(tmp / CHECKSUMS)
    fsync_path(tmp)
    os.rename(tmp, final)
    fsync_path(final.parent)


# What a run's checkpoints may differ in from those of the run it branches from: its length
# (checked through the learning rates it gives) and when it evaluates and checkpoints, none of
# which changes a step before the branch point.
_BRANCH_FREE = {"max_steps", "max_tokens", "eval", "checkpoint"}


def start_branch(source: Checkpoint, source_cfg: TrainConfig, cfg: TrainConfig, root: Path, seq_len: int) -> Checkpoint:
    """Make ``source``, a checkpoint of a run of ``source_cfg``, the first checkpoint of a run of ``cfg`` in ``root``.

    The run in ``root`` then resumes from it, model, optimizer, loader, RNG and guard alike, and
    ends where a whole run of ``cfg`` from step 0 would, without training the steps they share.
    That is a WSD decay branch: ``source`` is a ladder rung's stable run at the branch's decay
    start (``tasks.train.schedule.decay_start``). The source's spike events before its step
    come along (their skipped data and learning-rate cut are the branch's history too); later
    ones do not. ``root`` must hold no checkpoint yet; ``seq_len`` turns token budgets into steps.

    Refused unless both configs are resolved alike, differ only in length and cadences, and give
    the same learning rate at every step up to ``source``'s.
    """
    problem = CheckpointStore.verify(source)
    if problem is not None:
        raise ValueError(f"cannot branch from {source.path}: {problem}")
    if source.meta["config_hash"] != source_cfg.hash():
        raise ValueError(f"{source.path} is a checkpoint of config {source.meta['config_hash']}, not of the "
                         f"source config given ({source_cfg.hash()})")
    differ = sorted(k for k in TrainConfig.model_fields if k not in _BRANCH_FREE and getattr(cfg, k) != getattr(source_cfg, k))
    if differ:
        raise ValueError(f"a branch may differ from its source run only in {sorted(_BRANCH_FREE)}, this one also in {differ}")
    total, source_total = cfg.total_steps(seq_len), source_cfg.total_steps(seq_len)
    if source.step >= total or any(
        lr_at(step, total, 1.0, cfg.schedule) != lr_at(step, source_total, 1.0, cfg.schedule) for step in range(1, source.step + 1)
    ):
        raise ValueError(f"a run of {total} steps does not follow one of {source_total} up to step {source.step}: "
                         "branch at or before the shorter run's decay start (tasks.train.schedule.decay_start)")
    if checkpoints(root):
        raise ValueError(f"{root} already holds checkpoints: resume that run instead of branching into it")
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{0:06d}-step-{source.step:07d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source.path, tmp, ignore=shutil.ignore_patterns(CHECKSUMS, KNOWN_GOOD))
    meta = {**source.meta, "config_hash": cfg.hash(), "seq": 0, "branched_from": str(source.path)}
    (tmp / TRAINER).write_text(json.dumps(meta, indent=2, sort_keys=True))
    ledger_file = source.path.parent / LEDGER
    events = [] if not ledger_file.exists() else [
        event for event in json.loads(ledger_file.read_text())["events"] if event["rollback_step"] < source.step
    ]
    skips = merge_ranges([tuple(event["skipped"]) for event in events if event["skipped"][1] > event["skipped"][0]])
    # The ledger before the checkpoint: a crash in between leaves a branch with no checkpoint, which starts over.
    write_json_atomic(root / LEDGER, {"events": events, "skips": [list(r) for r in skips], "fired_faults": meta["fired_faults"]})
    _seal(tmp, root / name)
    if source.known_good:
        (root / name / KNOWN_GOOD).touch()
    return Checkpoint(root / name, 0, source.step)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

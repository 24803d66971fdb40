"""The MLflow model registry: one registered model, a version per candidate, aliases for roles.

Every candidate becomes a new version with alias ``challenger``, once: a version records what
was judged (``ladder.gate.inputs``: the weights, the eval suite, the policy and its inputs)
and against which champion (``ladder.gate.compared_with``; both make ``ladder.gate.key``), and
the same judgement asked again returns that version instead of registering a copy. Once that
champion is demoted the question is a new one; a candidate that became champion is not judged
again against itself.
The gate's decision is recorded on the version (``ladder.gate.decision``,
``ladder.gate.reasons``, and the scaling-law gate's outcome in ``ladder.gate.scaling``); a
version that passes takes alias ``champion`` from its predecessor, which keeps its version
number, its eval run and its metrics, and is tagged with who replaced it. A manual promotion
needs a reason, and for a version the gate rejected also an explicit override; both are tagged.

Every alias move is tagged on the version that takes the alias: who (the MLflow account the
server authenticated, else the local user), when, and why (the gate's report, or the manual
reason). An override of the gate is also recorded on the registered model
:data:`~ladder.services.OVERRIDES_MODEL`, which only release managers may write on a team's
server: that write is the override permission, so anyone else is refused before anything moves.

Two evaluations may finish at once: a decision is recorded only if the champion is still the
version it was judged against, checked and written under :func:`champion_lock` (a
compare-and-set); otherwise :class:`ChampionMoved` sends the candidate back to be judged again.

Registry state lives in tags and aliases only, so the standard clients read it:
``mlflow.transformers.load_model("models:/NAME@champion")``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ladder.config import content_hash
from ladder.services import OVERRIDES_MODEL, create_overrides_model
from ladder.tags import (
    COMPARED_TAG,
    DECISION_TAG,
    INPUTS_TAG,
    KEY_TAG,
    LOCK_EXPIRES_TAG,
    LOCK_HOLDER_TAG,
    LOCK_TOKEN_TAG,
    PROMOTION_TAG,
    REASONS_TAG,
    REPORT_TAG,
    SCALING_GATE,
    SCALING_OVERRIDE,
    SUITE_TAG,
    SUPERSEDED_TAG,
)
from tasks.evals.gate import Decision, ScalingGate
from tasks.evals.runner import MetricTable, table_from_dict

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED = "promoted"
REJECTED = "rejected"

# The champion lock (see champion_lock): a registered model named NAME + LOCK_SUFFIX.
LOCK_SUFFIX = ".champion-lock"
# A holder does a dozen registry calls under the lock (about a second); one still holding it
# after a minute has crashed, and its lock may be broken.
LOCK_TTL_S = 60.0
# A waiter outlasts one crashed holder's expiry, then gives up with the holder's name.
LOCK_WAIT_S = 2 * LOCK_TTL_S
LOCK_POLL_S = 0.2

METRICS_ARTIFACT = "metrics.json"
MODEL_ARTIFACT = "model"
# MLflow's limit on a model version tag's value; the full text is in the eval run's gate report.
MAX_TAG_CHARS = 5000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """A champion version and the eval table it was promoted with."""

    version: str
    suite_version: str
    table: MetricTable


def _client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def actor() -> str:
    """Who acts on the registry: the MLflow account (authenticated by a team's server), else the local user."""
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username or getpass.getuser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _audit(alias: str, by: str, at: str) -> dict[str, str]:
    """The tags recording who moved ``alias`` onto a version, and when."""
    prefix = PROMOTION_TAG if alias == CHAMPION else f"{PROMOTION_TAG}.{alias}"
    return {f"{prefix}.by": by, f"{prefix}.at": at}


def alias_version(name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None (also when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = _client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(alias)
    # The SQLite store returns versions as ints, the REST API as strings.
    return None if version is None else str(version)


def eval_table(run_id: str) -> MetricTable:
    """The eval table an evals run logged."""
    import mlflow

    return table_from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{METRICS_ARTIFACT}"))


def read_champion(name: str, version: str) -> Champion:
    """Version ``version`` of ``name`` as a champion: the suite it was judged on and its stored eval table."""
    found = _client().get_model_version(name, version)
    return Champion(str(version), found.tags.get(SUITE_TAG, ""), eval_table(found.run_id))


def _tag_text(text: str) -> str:
    if len(text) <= MAX_TAG_CHARS:
        return text
    cut = "\n... (cut: the full list is in the eval run's gate_report.md)"
    return text[: MAX_TAG_CHARS - len(cut)] + cut


def register_candidate(name: str, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of ``name`` (created on first use) from a logged model, with alias ``challenger``."""
    import mlflow

    audit = _audit(CHALLENGER, actor(), _now())
    version = mlflow.register_model(model_uri, name, tags={k: _tag_text(v) for k, v in {**tags, **audit}.items()})
    _client().set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def scaling_tags(outcome: ScalingGate) -> dict[str, str]:
    """The scaling-law gate's outcome as searchable version tags (``tags.`ladder.gate.scaling` = 'overridden'``)."""
    tags = {SCALING_GATE: outcome.status}
    if outcome.override_reason:
        tags[SCALING_OVERRIDE] = _tag_text(outcome.override_reason)
    return tags


def judgement_key(inputs: str, champion: str | None) -> str:
    """The key of one gate decision: what was judged (``inputs``) against which champion version (None before the first)."""
    return content_hash({"inputs": inputs, "champion": None if champion is None else str(champion)})


def decided_version(name: str, inputs: str) -> ModelVersion | None:
    """The version whose gate decision on ``inputs`` answers the question now, or None.

    That is the champion itself, if it was judged on ``inputs`` (a candidate is not judged
    against itself); else a version promoted on them (it passed once, and whatever replaced
    it passed the gate against it or was put there by hand); else the version judged on them
    against the current champion: after a demotion, a candidate rejected against the demoted
    champion is judged again.
    """
    champion = alias_version(name, CHAMPION)
    versions = _client().search_model_versions(f"name = '{name}'")  # none yet: an empty list
    # A version registered by a run that died before the gate recorded its decision is not reused.
    decided = sorted((v for v in versions if DECISION_TAG in v.tags), key=lambda v: int(v.version))
    same = [v for v in decided if v.tags.get(INPUTS_TAG) == inputs]
    serving = next((v for v in same if str(v.version) == champion), None)
    promoted = next((v for v in same if v.tags[DECISION_TAG] == PROMOTED), None)
    if serving is not None or promoted is not None:
        return serving or promoted
    key = judgement_key(inputs, champion)
    return next((v for v in decided if v.tags.get(KEY_TAG) == key), None)


def _take_champion(name: str, version: str, previous: str | None) -> None:
    """Move ``champion`` to ``version``, tagged first with who and when, so that no move goes unrecorded."""
    client = _client()
    by, at = actor(), _now()
    for key, value in _audit(CHAMPION, by, at).items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHAMPION, version)
    if alias_version(name, CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    if previous is not None and previous != str(version):
        for key, value in {SUPERSEDED_TAG: version, f"{SUPERSEDED_TAG}.by": by, f"{SUPERSEDED_TAG}.at": at}.items():
            client.set_model_version_tag(name, previous, key, value)


def _lock_tags(name: str) -> dict[str, str] | None:
    """The tags of the lock model ``name``, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_registered_model(name).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _try_lock(lock: str, token: str, ttl_s: float) -> bool:
    """One attempt to take ``lock``; breaks it instead when its holder's time is up (the next attempt may take it)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    now = datetime.now(timezone.utc)
    tags = {
        LOCK_HOLDER_TAG: f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}",
        LOCK_TOKEN_TAG: token,
        LOCK_EXPIRES_TAG: (now + timedelta(seconds=ttl_s)).isoformat(timespec="milliseconds"),
    }
    try:
        client.create_registered_model(lock, tags=tags, description="Held while a gate decision is recorded; not a model.")
        return True
    except MlflowException as err:
        # A create that finds the name taken reads the holder's model to say so (MLflow's SQL store);
        # a holder releasing in between turns that into RESOURCE_DOES_NOT_EXIST: free now, try again.
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    held = _lock_tags(lock)
    if held is None or datetime.fromisoformat(held[LOCK_EXPIRES_TAG]) > now:
        return False
    # The rename fails for every waiter but one (the name is unique to that holding) and keeps
    # the crashed holder's tags for whoever looks into it.
    try:
        client.rename_registered_model(lock, f"{lock}.expired.{held[LOCK_TOKEN_TAG]}")
        log.warning("broke the lock %s held by %s, expired at %s", lock, held[LOCK_HOLDER_TAG], held[LOCK_EXPIRES_TAG])
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            raise
    return False


@contextmanager
def champion_lock(name: str, ttl_s: float = LOCK_TTL_S, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the mutual exclusion over ``name``'s champion alias, for every process and machine on one tracking server.

    MLflow has no compare-and-set on aliases, but creating a registered model is atomic in the
    server's database: of two creates of one name, the second fails with
    RESOURCE_ALREADY_EXISTS. So the lock is the registered model ``NAME.champion-lock``: whoever
    creates it holds it, and deletes it to release it. Its tags name the holder and when its
    hold expires, so that a crashed holder cannot block forever: past that time a waiter
    breaks the lock by renaming it to ``NAME.champion-lock.expired.TOKEN``, which stays as the
    record of the crash. A holder still working past ``ttl_s`` could lose the lock, so
    ``ttl_s`` must far exceed the few registry calls made under it.
    """
    lock, token = f"{name}{LOCK_SUFFIX}", uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not _try_lock(lock, token, ttl_s):
        if time.monotonic() > deadline:
            held = _lock_tags(lock) or {}
            raise TimeoutError(
                f"waited {wait_s:.0f}s for the champion lock of {name}: registered model {lock} is held by "
                f"{held.get(LOCK_HOLDER_TAG, 'nobody now')} until {held.get(LOCK_EXPIRES_TAG, '-')}; try again, or if "
                f"nothing is evaluating or promoting {name}, delete the registered model {lock}"
            )
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        # Delete only our own hold: one that expired under us may have been broken and taken since.
        if (_lock_tags(lock) or {}).get(LOCK_TOKEN_TAG) == token:
            _client().delete_registered_model(lock)


class ChampionMoved(Exception):
    """The champion is no longer the version a decision was judged against: judge it again against ``champion``."""

    def __init__(self, name: str, judged_against: str | None, champion: str | None) -> None:
        super().__init__(f"the champion of {name} moved from {judged_against} to {champion} while the candidate was judged")
        self.champion = champion


def record_decision(
    name: str, version: str, decision: Decision, report_uri: str, inputs: str, compared_with: str | None
) -> str:
    """Record the gate's verdict on ``version``, judged on ``inputs`` against champion ``compared_with``; promote it if it passed.

    A compare-and-set under :func:`champion_lock`: the verdict is written (and the champion
    moved) only while the champion is still ``compared_with`` (None: there was none);
    otherwise nothing is written and :class:`ChampionMoved` names the champion to judge it
    against now. Returns the alias the version holds afterwards.
    """
    client = _client()
    compared_with = None if compared_with is None else str(compared_with)
    with champion_lock(name):
        champion = alias_version(name, CHAMPION)
        if champion != compared_with:
            raise ChampionMoved(name, compared_with, champion)
        tags = {INPUTS_TAG: inputs, COMPARED_TAG: compared_with or "", KEY_TAG: judgement_key(inputs, compared_with),
                REASONS_TAG: _tag_text("\n".join(decision.reasons)), REPORT_TAG: report_uri}
        for tag, value in tags.items():
            client.set_model_version_tag(name, version, tag, value)
        if decision.passed:
            client.set_model_version_tag(name, version, PROMOTION_TAG, "gate")
            _take_champion(name, version, champion)
        # Last: only a version with a decision is reused (decided_version), so it must be complete.
        client.set_model_version_tag(name, version, DECISION_TAG, PROMOTED if decision.passed else REJECTED)
    return CHAMPION if decision.passed else CHALLENGER


def _record_override(name: str, version: str, reason: str) -> None:
    """Record an override of the gate on :data:`OVERRIDES_MODEL`; refused (PermissionError) to anyone who may not write it.

    A single-user store gets the record model on first use; on a team's server the account
    set-up creates it, so that only release managers hold write access to it.
    """
    from mlflow.exceptions import MlflowException

    client, by = _client(), actor()
    # One tag per override, NAME/VERSION/TIME: MLflow allows neither ':' nor '+' in a tag key.
    key = f"{name}/{version}/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
    record = _tag_text(json.dumps({"by": by, "at": _now(), "reason": reason}))
    try:
        try:
            client.set_registered_model_tag(OVERRIDES_MODEL, key, record)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            create_overrides_model(client)
            client.set_registered_model_tag(OVERRIDES_MODEL, key, record)
    except MlflowException as err:
        if err.get_http_status_code() != 403:
            raise
        raise PermissionError(
            f"{by} may not override the release gate of {name}: only release managers may "
            f"(write access to registered model {OVERRIDES_MODEL}; see infra/README.md)"
        ) from None


def promote_manually(name: str, version: str, reason: str, override_gate: bool = False) -> ModelVersion:
    """Make ``version`` the champion by hand; the reason (and any override of a rejection) is tagged.

    A version the gate rejected is promoted only with ``override_gate``: a rollback to an
    earlier champion needs a reason, overriding the gate needs a deliberate flag as well.
    """
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason: say why this version should serve (--reason '...')")
    version = str(version)
    client = _client()
    found = client.get_model_version(name, version)
    if found.tags.get(DECISION_TAG) == REJECTED and not override_gate:
        raise ValueError(
            f"{name} version {version} was rejected by the release gate:\n{found.tags.get(REASONS_TAG, '')}\n"
            f"promote it anyway only with --override-gate and a reason"
        )
    if override_gate:
        _record_override(name, version, reason.strip())
    tags = {
        PROMOTION_TAG: "manual",
        f"{PROMOTION_TAG}.reason": _tag_text(reason.strip()),
        f"{PROMOTION_TAG}.override_gate": str(override_gate).lower(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    # Under the lock, so that a gate recording at the same time sees the champion it replaced.
    with champion_lock(name):
        _take_champion(name, version, alias_version(name, CHAMPION))
    return client.get_model_version(name, version)


def resolve(ref: str) -> ModelVersion:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> that model version."""
    from mlflow.exceptions import MlflowException

    client = _client()
    name, at, alias = ref.partition("@")
    try:
        if at:
            return client.get_model_version_by_alias(name, alias)
        name, slash, version = ref.rpartition("/")
        if slash and version.isdigit():
            return client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"{ref}: {err.message}") from None
    raise ValueError(f"{ref!r} names no model version: use NAME@ALIAS (e.g. ladder-tiny@champion) or NAME/VERSION")


def download(name: str, version: str, dst: Path) -> tuple[Path, Path]:
    """Download a version's MLflow model; returns its (model dir, tokenizer dir) for plain HF and lm-eval use."""
    import mlflow

    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst)))
    return root / "model", root / "components" / "tokenizer"


def lm_eval_command(model_dir: Path, tokenizer_dir: Path, include_path: Path, tasks: list[str]) -> list[str]:
    """The plain lm-eval command line that scores a downloaded version on the suite."""
    return [
        "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},tokenizer={tokenizer_dir},dtype=float32",
        "--include_path", str(include_path),
        "--tasks", ",".join(tasks),
        "--device", "cpu",
    ]


def version_summary(found: ModelVersion, aliases: list[str]) -> dict[str, str]:
    """What ``ladder lineage`` shows besides the chain: role, decision, promotion."""
    tags = found.tags
    summary = {
        "model": f"{found.name} version {found.version}",
        "aliases": ", ".join(aliases) or "none",
        "gate decision": tags.get(DECISION_TAG, "not gated"),
    }
    summary.update({key.removeprefix("ladder."): value for key, value in sorted(tags.items()) if key.startswith(PROMOTION_TAG)})
    if SUPERSEDED_TAG in tags:
        summary["superseded by"] = f"version {tags[SUPERSEDED_TAG]}"
    return summary


def aliases_of(name: str, version: str) -> list[str]:
    registered = _client().get_registered_model(name)
    return sorted(alias for alias, v in registered.aliases.items() if str(v) == str(version))


def reasons(found: ModelVersion) -> list[str]:
    return [line for line in found.tags.get(REASONS_TAG, "").splitlines() if line]

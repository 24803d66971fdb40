"""The MLflow model registry: one registered model, a version per candidate, aliases for roles.

Every candidate becomes a new version with alias ``challenger``, once: a version records what
was judged (``ladder.gate.key``: the weights, the eval suite, the policy and its inputs), and
the same judgement asked again returns that version instead of registering a copy. The gate's decision is
recorded on the version (``ladder.gate.decision``, ``ladder.gate.reasons``); a version that
passes takes alias ``champion`` from its predecessor, which keeps its version number, its
eval run and its metrics, and is tagged with who replaced it. A manual promotion needs a
reason, and for a version the gate rejected also an explicit override; both are tagged.

Registry state lives in tags and aliases only, so the standard clients read it:
``mlflow.transformers.load_model("models:/NAME@champion")``.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.evals.gate import Decision
from tasks.evals.runner import MetricTable, table_from_dict

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED = "promoted"
REJECTED = "rejected"

DECISION_TAG = "ladder.gate.decision"
REASONS_TAG = "ladder.gate.reasons"
REPORT_TAG = "ladder.gate.report"
SUITE_TAG = "ladder.eval_suite"
SUPERSEDED_TAG = "ladder.superseded_by"
PROMOTION_TAG = "ladder.promotion"
KEY_TAG = "ladder.gate.key"
COMPARED_TAG = "ladder.gate.compared_with"

METRICS_ARTIFACT = "metrics.json"
MODEL_ARTIFACT = "model"
# MLflow's limit on a model version tag's value; the full text is in the eval run's gate report.
MAX_TAG_CHARS = 5000


@dataclass(frozen=True)
class Champion:
    """The current champion and the eval table it was promoted with."""

    version: str
    suite_version: str
    table: MetricTable


def _client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


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
    """The eval table an evaluate run logged."""
    import mlflow

    return table_from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{METRICS_ARTIFACT}"))


def current_champion(name: str) -> Champion | None:
    """The champion of ``name`` with its stored eval table, or None before the first promotion."""
    version = alias_version(name, CHAMPION)
    if version is None:
        return None
    found = _client().get_model_version(name, version)
    return Champion(version, found.tags.get(SUITE_TAG, ""), eval_table(found.run_id))


def _tag_text(text: str) -> str:
    if len(text) <= MAX_TAG_CHARS:
        return text
    cut = "\n... (cut: the full list is in the eval run's gate_report.md)"
    return text[: MAX_TAG_CHARS - len(cut)] + cut


def register_candidate(name: str, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of ``name`` (created on first use) from a logged model, with alias ``challenger``."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags={k: _tag_text(v) for k, v in tags.items()})
    _client().set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def decided_version(name: str, key: str) -> ModelVersion | None:
    """The version whose gate decision was made on ``key`` (see ``KEY_TAG``), or None."""
    versions = _client().search_model_versions(f"name = '{name}'")  # none yet: an empty list
    # A version registered by a run that died before the gate recorded its decision is not reused.
    decided = [v for v in versions if v.tags.get(KEY_TAG) == key and DECISION_TAG in v.tags]
    return min(decided, key=lambda v: int(v.version), default=None)


def _take_champion(name: str, version: str, previous: str | None) -> None:
    client = _client()
    client.set_registered_model_alias(name, CHAMPION, version)
    if alias_version(name, CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, previous, SUPERSEDED_TAG, version)


def record_decision(name: str, version: str, decision: Decision, report_uri: str) -> str:
    """Tag the gate's verdict on ``version``; promote it if it passed. Returns its alias afterwards."""
    client = _client()
    outcome = PROMOTED if decision.passed else REJECTED
    client.set_model_version_tag(name, version, DECISION_TAG, outcome)
    client.set_model_version_tag(name, version, REASONS_TAG, _tag_text("\n".join(decision.reasons)))
    client.set_model_version_tag(name, version, REPORT_TAG, report_uri)
    if not decision.passed:
        return CHALLENGER
    client.set_model_version_tag(name, version, PROMOTION_TAG, "gate")
    _take_champion(name, version, alias_version(name, CHAMPION))
    return CHAMPION


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
    tags = {
        PROMOTION_TAG: "manual",
        f"{PROMOTION_TAG}.reason": _tag_text(reason.strip()),
        f"{PROMOTION_TAG}.override_gate": str(override_gate).lower(),
        f"{PROMOTION_TAG}.by": getpass.getuser(),
        f"{PROMOTION_TAG}.at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
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

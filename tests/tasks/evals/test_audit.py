"""The audit trail of alias moves on a single-user store (SQLite, no server): who, when, and why.

The same trail with accounts and permissions on a team's server is in tests/infra/test_auth.py.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from decisions import PASSED, REJECTED
from ladder.services import OVERRIDES_MODEL
from ladder.tags import PROMOTION_TAG, REPORT_TAG, SUPERSEDED_TAG
from tasks.evals import registry

NAME = "ladder-audit"



def _candidate(experiment: str) -> str:
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("stand-in", "model/MLmodel")
    return str(registry.register_candidate(NAME, f"runs:/{run.info.run_id}/model", {}).version)


def test_every_alias_move_records_who_when_and_why_and_an_override_needs_a_reason(experiment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    me = getpass.getuser()
    first = _candidate(experiment)
    tags = registry.resolve(f"{NAME}/{first}").tags
    assert tags[f"{PROMOTION_TAG}.challenger.by"] == me
    datetime.fromisoformat(tags[f"{PROMOTION_TAG}.challenger.at"])

    registry.record_decision(NAME, first, PASSED, "runs:/r/gate_report.md", "k1", None)
    tags = registry.resolve(f"{NAME}@{registry.CHAMPION}").tags
    assert (tags[PROMOTION_TAG], tags[f"{PROMOTION_TAG}.by"], tags[REPORT_TAG]) == ("gate", me, "runs:/r/gate_report.md")

    # The name the tracking server would authenticate is the one recorded.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rita")
    second = _candidate(experiment)
    registry.record_decision(NAME, second, REJECTED, "runs:/s/gate_report.md", "k2", first)
    with pytest.raises(ValueError, match="needs a reason"):
        registry.promote_manually(NAME, second, " ", override_gate=True)
    assert not MlflowClient().search_registered_models(f"name = '{OVERRIDES_MODEL}'")
    registry.promote_manually(NAME, second, "accepted for the demo", override_gate=True)
    tags = registry.resolve(f"{NAME}@{registry.CHAMPION}").tags
    assert {key: tags[f"{PROMOTION_TAG}{key}"] for key in ("", ".by", ".reason", ".override_gate")} == {
        "": "manual", ".by": "rita", ".reason": "accepted for the demo", ".override_gate": "true"}
    demoted = registry.resolve(f"{NAME}/{first}").tags
    assert (demoted[SUPERSEDED_TAG], demoted[f"{SUPERSEDED_TAG}.by"]) == (second, "rita")
    [(key, record)] = MlflowClient().get_registered_model(OVERRIDES_MODEL).tags.items()
    assert key.startswith(f"{NAME}/{second}/")
    assert {k: v for k, v in json.loads(record).items() if k != "at"} == {"by": "rita", "reason": "accepted for the demo"}


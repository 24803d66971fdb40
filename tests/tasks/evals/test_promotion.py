"""Promotion as a compare-and-set against a real MLflow tracking server: the champion lock and concurrent evaluations.

The lock must hold across processes and machines, so it is exercised where they would meet:
one ``mlflow server`` (SQLite backend) on a free loopback port, started for the module.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ladder import services
from ladder.workspace import Workspace
from tasks.evals import registry
from tasks.evals.config import GatePolicy
from tasks.evals.gate import judge
from tasks.evals.runner import Metric, MetricTable, Scores, table_to_dict
from tasks.evals.stage import Judgement, judge_and_record
from tasks.evals.stats import ItemScores

pytestmark = pytest.mark.slow

# Each candidate is better than the other on one metric and no drop is allowed: whichever is
# champion, the other regresses against it.
POLICY = GatePolicy(floors={"a/acc": 0.3, "b/acc": 0.3}, regression_margins={"a/acc": 0.0, "b/acc": 0.0}, alignment_tax={})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracking server of its own; returns an experiment id whose artifacts the client writes directly."""
    ws = Workspace(tmp_path_factory.mktemp("promotion"))
    port = _free_port()
    saved = dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    try:
        services.up(ws, only={"mlflow"}, mlflow_port=port)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        yield MlflowClient().create_experiment("promotion", artifact_location=(ws.mlflow_artifact_root / "promotion").as_uri())
    finally:
        services.down(ws)
        # Unset first (it clears the environment variable), so that the restored environment decides again.
        mlflow.set_tracking_uri(None)
        os.environ.clear()
        os.environ.update(saved)


def _candidate(experiment: str, name: str, table: MetricTable) -> str:
    """A registered version whose run holds a (stand-in) model and its eval table."""
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("stand-in", "model/MLmodel")
        mlflow.log_dict(table_to_dict(table), registry.METRICS_ARTIFACT)
    return str(registry.register_candidate(name, f"runs:/{run.info.run_id}/model", {registry.SUITE_TAG: "s1"}).version)


def _table(a: float, b: float) -> MetricTable:
    return {"a/acc": Metric(a, 0.01, True, 50), "b/acc": Metric(b, 0.01, True, 50)}


def _scores(table: MetricTable) -> Scores:
    """The table with per-item results that score it: the first items right."""
    ids = tuple(f"q{i}" for i in range(50))
    return Scores(table, {name: ItemScores("acc", ids, tuple(float(i < round(m.value * 50)) for i in range(50)))
                          for name, m in table.items()})


def test_two_concurrent_evaluations_promote_one_and_judge_the_other_against_it(server: str) -> None:
    name = "concurrent"
    tables = {"x": _table(0.6, 0.4), "y": _table(0.4, 0.6)}
    versions = {who: _candidate(server, name, table) for who, table in tables.items()}
    both_judged = threading.Barrier(2)
    asked: dict[str, list[str | None]] = {who: [] for who in tables}

    def judge_for(who: str):
        """The gate against the champion's stored table; the first judgements of both meet before either records."""
        def judge_against(champion: str | None) -> Judgement:
            asked[who].append(champion)
            if len(asked[who]) == 1:
                both_judged.wait(timeout=60)
            stored = next(_scores(tables[w]) for w in tables if versions[w] == champion) if champion else None
            return Judgement(None, judge(_scores(tables[who]), POLICY, stored), f"runs:/{who}/gate_report.md")
        return judge_against

    with ThreadPoolExecutor(2) as pool:
        futures = {who: pool.submit(judge_and_record.fn, name, versions[who], f"inputs-{who}", judge_for(who)) for who in tables}
        results = {who: future.result(timeout=120) for who, future in futures.items()}

    champion = registry.alias_version(name, registry.CHAMPION)
    (winner,) = [who for who in tables if versions[who] == champion]
    (loser,) = [who for who in tables if who != winner]
    # Both were judged against no champion; only the first to record was promoted on that judgement.
    assert asked[winner] == [None]
    assert asked[loser] == [None, champion]
    assert results[winner][0].decision.passed and results[winner][1] == registry.CHAMPION
    assert not results[loser][0].decision.passed
    client = MlflowClient()
    won, lost = (client.get_model_version(name, versions[who]).tags for who in (winner, loser))
    assert (won[registry.DECISION_TAG], won[registry.COMPARED_TAG]) == (registry.PROMOTED, "")
    assert (lost[registry.DECISION_TAG], lost[registry.COMPARED_TAG]) == (registry.REJECTED, champion)
    assert lost[registry.KEY_TAG] == registry.judgement_key(f"inputs-{loser}", champion)
    assert "FAIL regression" in lost[registry.REASONS_TAG]
    assert not client.search_registered_models(f"name = '{name}{registry.LOCK_SUFFIX}'")


def _hold(lock: str, expires: datetime) -> None:
    """A lock as a holder that crashed (or still works) leaves it."""
    MlflowClient().create_registered_model(lock, tags={
        registry.LOCK_HOLDER_TAG: "someone@elsewhere pid 1", registry.LOCK_TOKEN_TAG: "crashed",
        registry.LOCK_EXPIRES_TAG: expires.isoformat(),
    })


def test_a_held_lock_makes_others_wait_and_an_expired_one_is_broken(server: str) -> None:
    name = "locked"
    lock = f"{name}{registry.LOCK_SUFFIX}"
    _hold(lock, datetime.now(timezone.utc) + timedelta(minutes=5))
    with pytest.raises(TimeoutError, match=f"held by someone@elsewhere pid 1 .*delete the registered model {lock}"):
        with registry.champion_lock(name, wait_s=1.0):
            pass
    MlflowClient().delete_registered_model(lock)

    _hold(lock, datetime.now(timezone.utc) - timedelta(seconds=1))
    with registry.champion_lock(name, wait_s=5.0):
        held = MlflowClient().get_registered_model(lock).tags
        assert held[registry.LOCK_TOKEN_TAG] != "crashed"
    # The crashed holding stays on record under its own name; the lock itself is gone.
    client = MlflowClient()
    broken = client.get_registered_model(f"{lock}.expired.crashed")
    assert broken.tags[registry.LOCK_HOLDER_TAG] == "someone@elsewhere pid 1"
    assert not client.search_registered_models(f"name = '{lock}'")

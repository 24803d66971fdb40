"""The evals flow end to end against a real MLflow tracking server: gate, registry, lineage, standard clients.

One server and one pair of tiny models for the module: a model trained for a few steps (the
first candidate, promoted against the floors alone) and an untrained one (the second
candidate, a regression). Real Prefect (test harness), DVC (local remote), lm-eval, torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from typer.testing import CliRunner

from app.cli import app
from flows.evals import evals_flow
from ladder import services
from ladder.artifacts import ArtifactRef, StageOutput
from ladder.runtime import configure
from ladder.tracking import stage_run
from ladder.workspace import Workspace
from ladder import tags
from models.llama import ModelConfig
from tests.tiny_lm import save_tiny_lm
from tasks.data.document import iter_split
from tasks.data.dataset import resolve_dataset
from tasks.data.version import dvc_md5, run_dvc
from tasks.evals import registry
from tasks.evals.config import RunConfig, SuiteConfig
from tasks.evals.gate import ADVISORY, FAILED, GATE_PLOT, OVERRIDDEN, ScalingGate
from tasks.evals.stage import Verdict, score_champion
from tasks.evals.suite import STAGE as SUITE_STAGE
from tasks.evals.suite import TASKS_DIR, build_suite
from tasks.scaling.stage import CODE as SCALING_CODE, STAGE as SCALING_STAGE
from tasks.tokenizer.config import TokenizerTrainingConfig
from tasks.tokenizer.hf import save_hf
from tasks.tokenizer.train import train_candidate
from tests.tasks.evals.eval_corpus import write_curated

pytestmark = pytest.mark.slow

MLFLOW_PORT = 15100
NAME = "ladder-test"
# Fewer items than the tiny profile: the flow's wiring is under test. Only bits per byte has a
# floor: on random pseudo-verse the cloze tasks sit near chance for any model.
OVERRIDES = [
    f"evals.registered_model={NAME}",
    "evals.suite.items_per_task=24",
    "evals.suite.fewshot_pool=8",
    "evals.suite.ppl_docs_per_source=6",
    "evals.suite.num_fewshot=2",
    "evals.gate.floors={ladder_ppl/bits_per_byte: 4.0}",
]
MODEL = ModelConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, intermediate_size=192, max_seq_len=256)


@dataclass(frozen=True)
class Stack:
    ws: Workspace
    dataset_md5: str
    trained_dir: Path
    untrained_dir: Path
    training_run_id: str
    scaling: ArtifactRef  # the ladder that predicted the trained model (a stand-in fit)


def _save_model(out: Path, tokenizer_dir: Path, data_dir: Path, steps: int) -> Path:
    """A tiny Llama trained for ``steps`` steps on the train split, saved with its tokenizer."""
    return save_tiny_lm(MODEL, tokenizer_dir, data_dir, out, steps)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Stack]:
    ws = Workspace(tmp_path_factory.mktemp("evals") / "ws")
    ws.root.mkdir()
    dvc_env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True, env=dvc_env)
    write_curated(ws.data, {"train": 160, "validation": 24, "test": 30})
    run_dvc(ws.root, "init", "-q")
    run_dvc(ws.root, "remote", "add", "-d", "local", str(ws.dvc_remote))
    run_dvc(ws.root, "add", "-q", "data")
    saved = dict(os.environ)
    os.environ.update({
        "LADDER_ROOT": str(ws.root),
        # No port answers there: configure() must not adopt servers other processes started.
        "LADDER_PREFECT_URL": "http://127.0.0.1:9",
        "LADDER_MLFLOW_URL": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}",
    })
    try:
        services.up(ws, only={"mlflow"}, mlflow_port=MLFLOW_PORT)
        configure(ws)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        tok_cfg = TokenizerTrainingConfig(candidates=["bpe"], vocab_sizes=[MODEL.vocab_size])
        tokenizer_dir = ws.state / "tokenizer"
        save_hf(train_candidate("bpe", MODEL.vocab_size, (d.text for d in iter_split(ws.data, "train")), tok_cfg), tok_cfg, tokenizer_dir)
        with stage_run(ws, "train", MODEL, tags={"ladder.data.md5": dvc_md5(ws)}) as run:
            trained = _save_model(ws.state / "models" / "trained", tokenizer_dir, ws.data, steps=80)
        untrained = _save_model(ws.state / "models" / "untrained", tokenizer_dir, ws.data, steps=0)

        def fit(out: Path) -> StageOutput:
            (out / "fit.json").write_text("{}")
            return StageOutput()

        scaling, _ = ws.store().run_stage(SCALING_STAGE, MODEL, {"dataset": dvc_md5(ws)}, fit, code=SCALING_CODE)
        yield Stack(ws, dvc_md5(ws), trained, untrained, run.info.run_id, scaling.ref)
    finally:
        services.down(ws)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def promoted(stack: Stack) -> Verdict:
    """The first candidate: no champion yet."""
    return evals_flow(
        overrides=OVERRIDES, model_dir=str(stack.trained_dir), training_run_id=stack.training_run_id,
        lineage={"scaling": stack.scaling},
    )


@pytest.fixture(scope="module")
def rejected(stack: Stack, promoted: Verdict) -> Verdict:
    """The second candidate: an untrained model, far worse than the champion."""
    return evals_flow(overrides=OVERRIDES, model_dir=str(stack.untrained_dir))


def _metric(result: Verdict, name: str) -> dict[str, Any]:
    return next(row for row in result.metrics if row["metric"] == name)


def test_first_candidate_passes_the_floors_and_becomes_champion(stack: Stack, promoted: Verdict) -> None:
    assert (promoted.decision, promoted.version, promoted.alias) == ("promoted", "1", "champion")
    assert promoted.champion_before is None
    assert any("no champion yet" in reason for reason in promoted.reasons)
    bpb = _metric(promoted, "ladder_ppl/bits_per_byte")
    assert bpb["value"] < 4.0 and bpb["stderr"] > 0 and bpb["higher_is_better"] is False
    assert {"ladder_next_line_2shot/acc_norm", "ladder_last_word_gen/exact_match"} <= {r["metric"] for r in promoted.metrics}
    assert promoted.contaminated_items == 0

    client = MlflowClient()
    champion = client.get_model_version_by_alias(NAME, registry.CHAMPION)
    assert champion.version == "1" and champion.tags[registry.DECISION_TAG] == registry.PROMOTED
    assert registry.aliases_of(NAME, "1") == [registry.CHAMPION]  # a champion is no longer a challenger
    run = client.get_run(promoted.eval_run_id)
    # The eval run hangs under the training run and holds results, samples, table and report.
    assert run.data.tags["mlflow.parentRunId"] == stack.training_run_id
    assert run.data.metrics["ladder_ppl/bits_per_byte"] == pytest.approx(bpb["value"])
    assert run.data.metrics["ladder_ppl/bits_per_byte_stderr"] == pytest.approx(bpb["stderr"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gate_report.md", registry.METRICS_ARTIFACT, "lm_eval", "suite"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "lm_eval/samples")}
    assert "lm_eval/samples/ladder_next_line.jsonl" in samples
    report = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/gate_report.md")
    assert report.startswith("# Release gate: PROMOTED")
    with get_client(sync_client=True) as prefect:
        shown = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-gate-report"])))
    assert any(a.type == "markdown" and a.data == report for a in shown)


def test_regressing_candidate_stays_challenger_with_reasons(stack: Stack, promoted: Verdict, rejected: Verdict) -> None:
    assert (rejected.decision, rejected.version, rejected.alias) == ("rejected", "2", "challenger")
    assert rejected.champion_before == "1"
    failures = [r for r in rejected.reasons if r.startswith("FAIL")]
    assert any(r.startswith("FAIL regression ladder_ppl/bits_per_byte: candidate") for r in failures), failures

    client = MlflowClient()
    assert client.get_model_version_by_alias(NAME, registry.CHAMPION).version == "1"
    challenger = client.get_model_version_by_alias(NAME, registry.CHALLENGER)
    assert challenger.version == "2" and challenger.tags[registry.DECISION_TAG] == registry.REJECTED
    assert "FAIL regression ladder_ppl/bits_per_byte" in challenger.tags[registry.REASONS_TAG]
    # The picture of the paired differences is in the eval run and inline in the Prefect report.
    assert GATE_PLOT in {a.path for a in client.list_artifacts(rejected.eval_run_id)}
    with get_client(sync_client=True) as prefect:
        shown = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-gate-report"])))
    assert any(a.data.startswith("# Release gate: REJECTED") and "](data:image/png;base64," in a.data for a in shown)
    # The champion keeps its version and the metrics it was promoted with.
    kept = registry.eval_table(client.get_model_version(NAME, "1").run_id)
    assert kept["ladder_ppl/bits_per_byte"].value == pytest.approx(_metric(promoted, "ladder_ppl/bits_per_byte")["value"])


def test_the_same_candidate_judged_again_is_reported_not_registered_again(
    stack: Stack, promoted: Verdict, rejected: Verdict
) -> None:
    again = evals_flow(
        overrides=OVERRIDES, model_dir=str(stack.trained_dir), training_run_id=stack.training_run_id,
        lineage={"scaling": stack.scaling},
    )
    assert again.reused and not promoted.reused
    assert (again.decision, again.version, again.alias, again.eval_run_id) == (
        "promoted", "1", "champion", promoted.eval_run_id)
    assert again.metrics == promoted.metrics and again.reasons == promoted.reasons
    assert again.lineage == promoted.lineage
    assert sorted(v.version for v in MlflowClient().search_model_versions(f"name = '{NAME}'")) == ["1", "2"]
    # A stricter policy is another judgement: the same weights are evaluated and registered anew.
    stricter = evals_flow(
        overrides=[*OVERRIDES, "evals.gate.floors={ladder_ppl/bits_per_byte: 0.5}"], model_dir=str(stack.trained_dir),
        training_run_id=stack.training_run_id,
    )
    assert (stricter.reused, stricter.version, stricter.decision) == (False, "3", "rejected")


def test_lineage_of_the_champion_names_dataset_and_training_run(stack: Stack, promoted: Verdict) -> None:
    result = CliRunner().invoke(app, ["lineage", f"{NAME}@champion"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for start, fact in (
        ("dataset: ", f"{stack.dataset_md5}, dvc_remote {stack.ws.dvc_remote}"),
        ("model: ", f"mlflow_run {stack.training_run_id}"),
        ("evaluation run ", f"eval_run {promoted.eval_run_id}"),
        ("scaling: ", f"scaling {stack.scaling.version}"),
    ):
        assert any(line.strip().startswith(start) and fact in line for line in lines), (start, fact, result.output)
    (top,) = [line for line in lines if line.strip().startswith("evaluation run ")]
    assert "git_commit " in top and re.search(r"prefect_flow_run [0-9a-f-]{36}", top), top


def test_standard_clients_load_and_score_the_champion(stack: Stack, promoted: Verdict, tmp_path: Path) -> None:
    pipeline = mlflow.transformers.load_model(f"models:/{NAME}@champion")
    generated = pipeline("Thou art", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert generated.startswith("Thou art")

    root = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "champion")))
    include = stack.ws.artifacts / SUITE_STAGE / promoted.suite_version / TASKS_DIR
    command = registry.lm_eval_command(root / "model", root / "components" / "tokenizer", include, ["ladder_next_line", "ladder_ppl_verse"])
    command[0] = str(Path(sys.executable).parent / "lm_eval")
    done = subprocess.run([*command, "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    # The command line's numbers are the flow's (its batch size differs, so allow float noise).
    assert results["ladder_ppl_verse"]["bits_per_byte,none"] == pytest.approx(
        _metric(promoted, "ladder_ppl_verse/bits_per_byte")["value"], rel=1e-4
    )
    assert results["ladder_next_line"]["acc,none"] == pytest.approx(_metric(promoted, "ladder_next_line/acc")["value"], abs=1 / 24 + 1e-9)


def test_a_champion_scored_on_another_suite_is_scored_again(stack: Stack, promoted: Verdict) -> None:
    other = build_suite.fn(stack.ws, SuiteConfig(seed=1, items_per_task=8, fewshot_pool=4, ppl_docs_per_source=2), resolve_dataset(stack.ws, stack.dataset_md5))
    assert other.version != promoted.suite_version
    scores = score_champion.fn(NAME, registry.alias_version(NAME, registry.CHAMPION), other, RunConfig())
    assert scores.version == registry.alias_version(NAME, registry.CHAMPION)
    assert f"re-scored on suite {other.version}" in scores.note
    assert set(scores.table) == set(other.metrics)
    assert scores.table["ladder_ppl/bits_per_byte"].items == 4


def test_the_scaling_gate_outcome_is_judged_and_tagged_as_what_it_is(stack: Stack) -> None:
    """An overridden miss passes as overridden, an advisory one as advisory, a required one is rejected; each is tagged."""
    name = "ladder-test-scaling"  # a registry of its own: these promotions must not move the module's champion
    overrides = [*OVERRIDES, f"evals.registered_model={name}"]
    missed = ScalingGate(FAILED, ["actual loss 3.9000 is outside the 95% interval"], prediction={"loss": 3.5})
    overridden = evals_flow(
        overrides=overrides, model_dir=str(stack.trained_dir),
        scaling_gate=replace(missed, status=OVERRIDDEN, override_reason="known tokenizer change"),
    )
    advisory = evals_flow(
        overrides=[*overrides, "evals.gate.scaling_gate=advisory"], model_dir=str(stack.trained_dir),
        scaling_gate=replace(missed, status=ADVISORY),
    )
    # a deployment passes the outcome as JSON: the flow takes it as the same gate
    required = evals_flow(overrides=overrides, model_dir=str(stack.trained_dir), scaling_gate=missed.to_dict())

    assert [r.decision for r in (overridden, advisory, required)] == ["promoted", "promoted", "rejected"]
    assert any(r.startswith("OVERRIDDEN scaling_prediction: missed its prediction, overridden (known tokenizer change)")
               for r in overridden.reasons)
    assert any(r.startswith("ADVISORY scaling_prediction") for r in advisory.reasons)
    assert required.reasons[0].startswith("FAIL scaling_prediction: failed: actual loss 3.9000")
    client = MlflowClient()
    recorded = [client.get_model_version(name, r.version).tags for r in (overridden, advisory, required)]
    assert [t[tags.SCALING_GATE] for t in recorded] == [OVERRIDDEN, ADVISORY, FAILED]
    assert [t.get(tags.SCALING_OVERRIDE) for t in recorded] == ["known tokenizer change", None, None]
    found = client.search_model_versions(f"name = '{name}' and tags.`{tags.SCALING_GATE}` = '{OVERRIDDEN}'")
    assert [v.version for v in found] == [overridden.version]

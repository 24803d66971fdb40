"""The whole pipeline end to end on three texts of the example corpus, every stage small.

Real components throughout: Prefect (test harness), MLflow (SQLite store with the registry),
DVC (local remote), GX, tokenizers, DeepSpeed training, lm-eval, TRL. One workspace holds the
module's runs: the first builds everything, an unchanged rerun finds every training stage
built, and a run whose target misses its prediction stops at the scaling gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from app.project import ProjectConfig
from flows.pipeline import GateStopped, pipeline_flow
from ladder import progress
from ladder.config import load
from ladder.lineage import missing, nodes
from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.data.corpus import corpus_version, list_inputs
from tasks.data.version import dvc_md5
from tasks.evals import lineage, registry
from tests.flows.small_pipeline import small_corpus, small_overrides
from tests.tasks.align.align_corpus import one_thread

pytestmark = pytest.mark.slow

CACHED_STAGES = ("data", "tokenizer", "scaling", "train")


@dataclass
class StageLog:
    """The stages a run announced, in order, with what each reported at its end (``ladder.progress``)."""

    finished: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def start(self, stage: str) -> None:
        pass

    def finish(self, stage: str, summary: dict[str, Any], seconds: float) -> None:
        self.finished.append((stage, summary))

    def cached(self, stage: str) -> bool:
        (summary,) = [s for name, s in self.finished if name == stage]
        return summary["cached"]


@dataclass(frozen=True)
class Run:
    summary: dict[str, Any]
    stages: StageLog


def _run_pipeline(overrides: list[str]) -> Run:
    stages = StageLog()
    with one_thread(), progress.showing(stages):
        summary = pipeline_flow(profile="tiny", overrides=overrides)
    return Run(summary, stages)


def _runs_of(ws: Workspace, stage: str) -> list:
    return MlflowClient().search_runs([experiment_id(ws)], filter_string=f"tags.`ladder.stage` = '{stage}'")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return small_overrides(small_corpus(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def first(module_workspace: Workspace, prefect_harness: None, overrides: list[str]) -> Run:
    return _run_pipeline(overrides)


@pytest.fixture(scope="module")
def again(first: Run, overrides: list[str]) -> Run:
    return _run_pipeline(overrides)


def test_first_run_versions_the_data_gates_the_target_and_registers_a_champion(
    module_workspace: Workspace, first: Run, overrides: list[str]
) -> None:
    summary = first.summary
    assert summary["dataset version (DVC md5)"] == dvc_md5(module_workspace)
    assert summary["dataset version (DVC md5)"].endswith(".dir")
    assert summary["scaling gate"].split()[0] in {"passed", "overridden"}
    model = load(ProjectConfig, "tiny", overrides).evals.registered_model
    assert summary["base model gate"] == f"promoted: {model} v1 @champion"
    # The aligned model's evaluation runs inside the align stage, so it finishes first.
    assert [name for name, _ in first.stages.finished] == [
        "data", "tokenizer", "scaling", "train", "evals", "evals", "align"
    ]
    assert not any(first.stages.cached(stage) for stage in CACHED_STAGES)

    # The registry holds the base model, promoted against the floors alone, and the aligned
    # candidate under its own name, judged against its base by the alignment-tax bound.
    client = MlflowClient()
    base = client.get_model_version(model, "1")
    assert base.tags[registry.DECISION_TAG] == registry.PROMOTED
    chat = load(ProjectConfig, "tiny", overrides).align.release_name(model)
    aligned = summary["aligned model gate"]
    assert aligned.startswith(("promoted", "rejected")) and f"{chat} v1 @" in aligned
    assert str(client.get_model_version_by_alias(model, registry.CHAMPION).version) == "1"

    # The aligned model's lineage names every artifact from DPO down to the raw corpus, each with
    # its config hash, code fingerprint, MLflow run and Prefect flow run, and the scaling fit and gate.
    tree = lineage.load(client.get_model_version(chat, "1").run_id)
    assert missing(tree) == []
    stages = {node["stage"] for node in nodes(tree) if "stage" in node}
    assert {"dpo", "preferences", "sft", "instructions", "train", "shards", "tokenizer", "data", "scaling", "evals"} <= stages
    assert tree["inputs"]["scaling_gate"]["value"] == summary["scaling gate"].split()[0]
    raw = corpus_version(list_inputs(load(ProjectConfig, "tiny", overrides).data.input))
    assert {node["inputs"]["corpus"]["value"] for node in nodes(tree) if node.get("stage") == "data"} == {raw}


def test_unchanged_rerun_finds_every_training_stage_built(
    module_workspace: Workspace, first: Run, again: Run, overrides: list[str]
) -> None:
    assert all(again.stages.cached(stage) for stage in CACHED_STAGES)
    assert again.summary["dataset version (DVC md5)"] == first.summary["dataset version (DVC md5)"]
    assert again.summary["target actual"] == first.summary["target actual"]
    # Nothing trained or fitted twice: one scaling run, one training run per rung and one for the target.
    rungs = len(load(ProjectConfig, "tiny", overrides).scaling.rungs)
    assert len(_runs_of(module_workspace, "scaling")) == 1
    assert len(_runs_of(module_workspace, "train")) == rungs + 1
    # Nor judged into the registry twice: the rerun reports the versions the first run registered.
    model = load(ProjectConfig, "tiny", overrides).evals.registered_model
    assert len(MlflowClient().search_model_versions(f"name = '{model}'")) == 1
    assert len(MlflowClient().search_model_versions(f"name = '{model}-chat'")) == 1
    assert again.summary["aligned model gate"] == first.summary["aligned model gate"]


def test_a_target_that_misses_its_prediction_stops_before_alignment(
    module_workspace: Workspace, again: Run, overrides: list[str]
) -> None:
    aligned_before = len(_runs_of(module_workspace, "align"))
    cfg = load(ProjectConfig, "tiny", overrides)
    last_step = cfg.train.total_steps(cfg.tokenizer.packing.seq_len)
    # A learning rate 1000x too high on the target's last step wrecks it after the spike guard
    # saw its (still good) loss; the rungs train without faults, so only the target misses.
    fault = f"train.faults=[{{step: {last_step}, kind: lr_multiply, factor: 1000}}]"
    stages = StageLog()
    stopped = "stopped before alignment by the scaling-law gate: actual loss"
    with one_thread(), progress.showing(stages), pytest.raises(GateStopped, match=stopped):
        pipeline_flow(profile="tiny", overrides=[*overrides, "scaling.override_gate=false", fault])
    assert stages.cached("data") and stages.cached("tokenizer")
    assert [name for name, _ in stages.finished] == ["data", "tokenizer", "scaling", "train"]
    assert len(_runs_of(module_workspace, "align")) == aligned_before
    # The refitted scaling run records the decision (runs come newest first).
    assert _runs_of(module_workspace, "scaling")[0].data.tags["ladder.gate.scaling"] == "failed"

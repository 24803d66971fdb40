"""Which model the evals stage picks by default, and the lineage it walks from the manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ladder.artifacts import Artifact, StageOutput, code_fingerprint
from ladder.lineage import missing, nodes, render
from ladder.config import Section
from ladder.tracking import stage_run
from ladder.workspace import Workspace
from tasks.data.curate import DATA_FILES
from tasks.data.dataset import dvc_dir_md5
from tasks.data.version import STAMPS
from tasks.evals import lineage
from tasks.evals.gate import OVERRIDDEN, ScalingGate
from tasks.evals.stage import Candidate, resolve_candidate
from tasks.train.stage import CODE as TRAIN_CODE, MODEL_DIR as TRAIN_MODEL_DIR, STAGE as TRAIN_STAGE

MD5 = "0123456789abcdef0123456789abcdef.dir"


class Stub(Section):
    """A stand-in stage config."""

    name: str = "stub"


def _train_artifact(ws: Workspace, seed: int) -> Path:
    def build(out: Path) -> StageOutput:
        (out / TRAIN_MODEL_DIR).mkdir()
        (out / TRAIN_MODEL_DIR / "config.json").write_text("{}")
        return StageOutput()

    artifact, _ = ws.store().run_stage(TRAIN_STAGE, Stub(name=f"s{seed}"), {"dataset": MD5}, build, code=TRAIN_CODE)
    return artifact.path


def test_default_candidate_is_the_latest_trained_model_with_its_training_run(mlflow_store: Path) -> None:
    ws = Workspace(mlflow_store)
    with pytest.raises(ValueError, match="ladder train"):
        resolve_candidate.fn(ws, None, None, None)
    _train_artifact(ws, 0)
    latest = _train_artifact(ws, 1)
    with stage_run(ws, TRAIN_STAGE, Stub(), produces=[(TRAIN_STAGE, latest.name)]) as run:
        pass
    candidate = resolve_candidate.fn(ws, None, None, None)
    assert candidate.model_dir == latest / TRAIN_MODEL_DIR
    assert candidate.training_run_id == run.info.run_id
    assert resolve_candidate.fn(ws, None, str(latest / TRAIN_MODEL_DIR), "given").training_run_id == "given"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_candidate.fn(ws, None, str(mlflow_store / "nowhere"), None)


def _stage(ws: Workspace, stage: str, name: str, inputs: dict[str, str], files: dict[str, str]) -> Artifact:
    def build(out: Path) -> StageOutput:
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        return StageOutput()

    return ws.store().run_stage(stage, Stub(name=name), inputs, build, code=TRAIN_CODE)[0]


def test_lineage_walks_the_manifests_to_the_raw_corpus_with_each_artifacts_own_run(mlflow_store: Path) -> None:
    ws = Workspace(mlflow_store)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q", "--no-scm"], cwd=ws.root, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "local", str(ws.dvc_remote)], cwd=ws.root, check=True)
    data = _stage(ws, "data", "d", {"corpus": "raw-corpus-hash"},
                  {"curated/train/part-00000.jsonl": "", "dataset.json": '{"corpus": "raw-corpus-hash"}'})
    md5 = dvc_dir_md5(data.path, DATA_FILES)
    (ws.artifacts / "data" / STAMPS).write_text(json.dumps({data.version: md5}))
    tokenizer = _stage(ws, "tokenizer", "t", {"dataset": md5}, {"tokenizer.json": "{}"})
    shards = _stage(ws, "shards", "s", {"dataset": md5, "tokenizer": tokenizer.version}, {"index.json": "{}"})
    model = _stage(ws, TRAIN_STAGE, "p", {"dataset": md5, "shards": shards.version, "tokenizer": tokenizer.version},
                   {f"{TRAIN_MODEL_DIR}/config.json": "{}"})
    suite = _stage(ws, "evals", "e", {"dataset": md5}, {"suite.json": "{}"})
    fit = _stage(ws, "scaling", "l", {"shards": shards.version}, {"fit.json": "{}"})
    runs = {}
    for artifact, produces in ((data, []), (tokenizer, [shards]), (model, []), (suite, []), (fit, [])):
        with stage_run(ws, artifact.stage, Stub(), artifact, produces=[(a.stage, a.version) for a in produces]) as run:
            runs[artifact.stage] = run.info.run_id
    # A later tokenizer run for the same dataset but another config: the old search by md5 picked it.
    other = _stage(ws, "tokenizer", "other", {"dataset": md5}, {"tokenizer.json": "[]"})
    with stage_run(ws, "tokenizer", Stub(), other, tags={"ladder.data.md5": md5}):
        pass

    scaling = ScalingGate(OVERRIDDEN, ["outside the interval"], override_reason="known warmup bug")
    candidate = Candidate(model.path / TRAIN_MODEL_DIR, None, model.ref)
    tree = lineage.collect(ws, candidate, "eval-run", suite, scaling, {"scaling": fit.ref})

    trained = tree["inputs"]["model"]
    assert (trained["stage"], trained["version"], trained["mlflow_run"]) == (TRAIN_STAGE, model.version, runs[TRAIN_STAGE])
    assert trained["inputs"]["tokenizer"]["mlflow_run"] == runs["tokenizer"]
    assert trained["inputs"]["shards"]["mlflow_run"] == runs["tokenizer"]  # the tokenizer run packed them
    dataset = trained["inputs"]["dataset"]
    assert (dataset["value"], dataset["dvc_remote"]) == (md5, str(ws.dvc_remote))
    assert dataset["inputs"]["data"]["mlflow_run"] == runs["data"]
    assert dataset["inputs"]["data"]["inputs"]["corpus"] == {"value": "raw-corpus-hash"}
    assert tree["inputs"]["scaling"]["mlflow_run"] == runs["scaling"]
    assert tree["inputs"]["scaling_gate"]["value"] == "overridden"
    assert all(node["code"] == code_fingerprint(TRAIN_CODE) for node in nodes(tree) if "stage" in node)
    # Outside a Prefect flow run only the flow-run links are empty.
    assert {gap.rsplit(": ", 1)[1] for gap in missing(tree)} == {"prefect_flow_run"}
    tags = lineage.to_tags(tree)
    assert tags["ladder.lineage.dataset_md5"] == md5 and tags["ladder.lineage.corpus"] == "raw-corpus-hash"
    assert tags["ladder.lineage.training_runs"] == runs[TRAIN_STAGE]
    assert tags["ladder.lineage.scaling"] == fit.version
    assert tags["ladder.lineage.scaling_gate"] == "overridden"
    # Printed as a tree, each artifact once in full: the dataset feeds four of them.
    lines = [line.strip() for line in render(tree)]
    assert sum(line.startswith(f"tokenizer: tokenizer {tokenizer.version} (config_hash") for line in lines) == 1
    assert f"tokenizer: tokenizer {tokenizer.version} (as above)" in lines
    assert sum(line.startswith(f"dataset: {md5}, dvc_remote") for line in lines) == 1
    assert lines.count(f"dataset: {md5} (as above)") >= 3

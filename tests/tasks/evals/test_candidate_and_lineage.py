"""Which model the evaluate stage picks by default, and the lineage links it finds by itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ladder.artifacts import ArtifactStore, StageOutput
from ladder.config import Section
from ladder.tracking import stage_run
from ladder.workspace import Workspace
from tasks.evals import lineage
from tasks.evals.stage import PRETRAIN_MODEL_DIR, PRETRAIN_STAGE, resolve_candidate

MD5 = "0123456789abcdef0123456789abcdef.dir"


class Stub(Section):
    """A stand-in stage config."""

    name: str = "stub"


def _pretrain_artifact(ws: Workspace, seed: int) -> Path:
    def build(out: Path) -> StageOutput:
        (out / PRETRAIN_MODEL_DIR).mkdir()
        (out / PRETRAIN_MODEL_DIR / "config.json").write_text("{}")
        return StageOutput()

    artifact, _ = ArtifactStore(ws.artifacts).run_stage(PRETRAIN_STAGE, Stub(name=f"s{seed}"), {"dataset": MD5}, build)
    return artifact.path


def test_default_candidate_is_the_latest_pretrained_model_with_its_training_run(mlflow_store: Path) -> None:
    ws = Workspace(mlflow_store)
    with pytest.raises(ValueError, match="ladder pretrain"):
        resolve_candidate.fn(ws, None, None)
    _pretrain_artifact(ws, 0)
    latest = _pretrain_artifact(ws, 1)
    with stage_run(ws, PRETRAIN_STAGE, Stub(), tags={"ladder.artifact_version": latest.name}) as run:
        pass
    candidate = resolve_candidate.fn(ws, None, None)
    assert candidate.model_dir == latest / PRETRAIN_MODEL_DIR
    assert candidate.training_run_id == run.info.run_id
    assert resolve_candidate.fn(ws, str(latest / PRETRAIN_MODEL_DIR), "given").training_run_id == "given"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_candidate.fn(ws, str(mlflow_store / "nowhere"), None)


def test_lineage_finds_the_data_and_tokenizer_runs_of_the_dataset(mlflow_store: Path) -> None:
    ws = Workspace(mlflow_store)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q", "--no-scm"], cwd=ws.root, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "local", str(ws.dvc_remote)], cwd=ws.root, check=True)
    with stage_run(ws, "data", Stub(), tags={"ladder.data.md5": MD5}) as data_run:
        pass
    with stage_run(ws, "tokenizer", Stub(), tags={"ladder.data.md5": MD5, "ladder.artifact_version": "tok123"}) as tok_run:
        pass
    with stage_run(ws, "tokenizer", Stub(), tags={"ladder.data.md5": "another.dir"}):
        pass
    scaling = {"passed": True, "reasons": ["inside the interval"], "prediction": {"loss": 3.2, "low": 3.1, "high": 3.3}}
    links = lineage.collect(ws, MD5, "train-run", "eval-run", "suite1", scaling, {"ladder_run": "ladder-run"})
    assert list(links)[: len(lineage.CHAIN)] == list(lineage.CHAIN)
    assert links["data_run"] == data_run.info.run_id
    assert links["data_quality_report"].endswith(f"{data_run.info.run_id}/artifacts/data_docs/index.html")
    assert (links["tokenizer_run"], links["tokenizer_version"]) == (tok_run.info.run_id, "tok123")
    assert links["dvc_remote"] == str(ws.dvc_remote)
    assert (links["training_runs"], links["ladder_run"], links["alignment_runs"]) == ("train-run", "ladder-run", lineage.UNKNOWN)
    assert '"low": 3.1' in links["scaling_prediction"] and '"passed": true' in links["scaling_gate"]
    assert lineage.from_tags({**lineage.to_tags(links), "other": "x"}) == links
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        lineage.collect(ws, MD5, None, "eval-run", "suite1", None, {"bad key": "x"})

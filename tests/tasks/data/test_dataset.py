"""The dataset resolver: a version is read from where it is, pulled from the DVC remote when it is nowhere here."""

from __future__ import annotations

import pytest

from ladder.workspace import Workspace
from tasks.data.dataset import dvc_dir_md5, resolve_dataset
from tasks.data.document import Document
from tasks.data.version import dataset_version, run_dvc


def _curate_by_hand(ws: Workspace, texts: list[str]) -> str:
    """A curated dataset in data/, added and pushed with DVC as a colleague would; returns its md5."""
    train = ws.data / "curated" / "train"
    train.mkdir(parents=True)
    (train / "part-00000.jsonl").write_text("".join(Document(f"d#{i}", "s", t).to_json() + "\n" for i, t in enumerate(texts)))
    (ws.data / "dataset.json").write_text('{"corpus": "raw-hash"}\n')
    run_dvc(ws.root, "add", "-q", "data")
    run_dvc(ws.root, "push", "-q", "data.dvc")
    return dataset_version(ws)


def test_a_version_pushed_elsewhere_is_pulled_verified_and_cached(two_workspaces) -> None:
    a, b = two_workspaces
    md5 = _curate_by_hand(a, ["first text", "second text"])
    assert dvc_dir_md5(a.data) == md5  # our hash is DVC's

    here = resolve_dataset(a, md5)
    assert (here.path, here.source) == (a.data, "data/ checkout")

    pulled = resolve_dataset(b, md5)
    assert pulled.source.startswith("DVC remote") and not b.data.exists()
    assert [d.text for d in pulled.documents("train")] == ["first text", "second text"]
    assert pulled.corpus == "raw-hash"
    again = resolve_dataset(b, md5)
    assert (again.path, again.source) == (pulled.path, "local dataset cache")

    # A cached copy that lost bytes is not trusted: it is pulled again.
    (pulled.path / "dataset.json").write_text("{}")
    assert resolve_dataset(b, md5).source.startswith("DVC remote")


def test_a_version_found_nowhere_names_itself_and_the_remote(two_workspaces) -> None:
    a, b = two_workspaces
    unknown = "0123456789abcdef0123456789abcdef.dir"
    with pytest.raises(ValueError, match=rf"dataset {unknown} is neither in this workspace nor on its DVC remote {a.dvc_remote}"):
        resolve_dataset(b, unknown)
    with pytest.raises(ValueError, match="not a dataset version"):
        resolve_dataset(b, "latest")

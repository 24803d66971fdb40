"""Replacing data/ with an artifact's data files: all of it or none of it."""

from pathlib import Path

import pytest

from ladder.artifacts import Artifact
from tasks.data.version import materialize


def _artifact(root: Path, text: str) -> Artifact:
    (root / "curated" / "train").mkdir(parents=True)
    (root / "curated" / "train" / "part-00000.jsonl").write_text(text)
    (root / "quarantine.jsonl").write_text("")
    (root / "dataset.json").write_text("{}")
    return Artifact("data", root.name, root, {})


def test_data_is_replaced_whole(tmp_path: Path) -> None:
    data = tmp_path / "ws" / "data"
    materialize(_artifact(tmp_path / "a", "first"), data)
    materialize(_artifact(tmp_path / "b", "second"), data)
    assert (data / "curated" / "train" / "part-00000.jsonl").read_text() == "second"
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]  # no copy left beside it


def test_a_copy_stopped_half_way_leaves_the_previous_data(tmp_path: Path) -> None:
    data = tmp_path / "ws" / "data"
    materialize(_artifact(tmp_path / "a", "first"), data)
    broken = _artifact(tmp_path / "b", "second")
    (broken.path / "dataset.json").unlink()  # copied last: the copy fails after curated/ is in
    with pytest.raises(FileNotFoundError):
        materialize(broken, data)
    assert (data / "curated" / "train" / "part-00000.jsonl").read_text() == "first"
    assert (data / "dataset.json").exists()
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]

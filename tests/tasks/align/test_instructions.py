"""Instruction items: every task family in one response style, seeded, screened against the eval splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.align.config import ALL_TASKS, InstructionConfig
from tasks.align.instructions import (
    CONTAMINATED,
    DROPPED_JSONL,
    HELDOUT_JSONL,
    LETTERS,
    REPLAY_JSONL,
    TRAIN_JSONL,
    Item,
    build_instruction_files,
    load_user_items,
)
from tasks.data.document import Document, iter_split
from tasks.evals.contamination import build_index, overlaps
from tasks.evals.suite import lines_of

EVAL_SPLITS = ["validation", "test"]


def _items(out: Path, name: str) -> list[Item]:
    return [Item.from_json(line) for line in (out / name).read_text().splitlines()]


def _build(data_dir: Path, cfg: InstructionConfig, out: Path):
    out.mkdir()
    return build_instruction_files(data_dir, cfg, EVAL_SPLITS, 13, out)


def test_every_task_is_built_in_one_response_style_and_deterministically(align_data: Path, tmp_path: Path) -> None:
    cfg = InstructionConfig(items_per_task=12, heldout_items_per_task=6)
    _build(align_data, cfg, tmp_path / "a")
    _build(align_data, cfg, tmp_path / "b")
    for name in (TRAIN_JSONL, HELDOUT_JSONL, REPLAY_JSONL):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    train, heldout = _items(tmp_path / "a", TRAIN_JSONL), _items(tmp_path / "a", HELDOUT_JSONL)
    docs = {d.id: d for split in ("train", "validation") for d in iter_split(align_data, split)}
    assert {d.id for d in iter_split(align_data, "validation")} >= {i.origin for i in heldout}
    assert {d.id for d in iter_split(align_data, "train")} >= {i.origin for i in train}
    for items in (train, heldout):
        assert sorted({i.task for i in items}) == sorted(ALL_TASKS)
    for item in train + heldout:
        doc = docs[item.origin]
        if item.task in ("continue", "missing_line"):
            assert item.response in lines_of(doc.text) and item.response not in item.prompt
        elif item.task in ("next_passage", "work"):
            assert item.response in LETTERS and f"{item.response}. " in item.prompt
        else:
            assert item.response == doc.source and "milton or shakespeare" in item.prompt
    assert all(len({i.template for i in train if i.task == t}) > 1 for t in ALL_TASKS)
    # Replay passages: unprompted runs of whole lines of the train split, as pretraining saw them.
    replay = _items(tmp_path / "a", REPLAY_JSONL)
    assert 0 < len(replay) <= cfg.replay_passages and not any(i.messages for i in replay)
    for item in replay:
        lines = lines_of(docs[item.origin].text)
        start = lines.index(item.response.split("\n")[0])
        assert item.response == "\n".join(lines[start : start + cfg.replay_lines])


def test_items_sharing_a_13_gram_with_the_other_side_are_dropped_and_counted(align_data: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(align_data, data_dir)
    held = next(iter_split(data_dir, "validation"))
    leak = Document("leak/0#0", held.source, f"A preface of words\n{held.text}", {"title": held.meta["title"]})
    with (data_dir / "curated" / "train" / "part-00000.jsonl").open("a") as fh:
        fh.write(leak.to_json() + "\n")
    test_text = " ".join(lines_of(next(iter_split(data_dir, "test")).text)[:4])
    user_file = tmp_path / "user.jsonl"
    user_file.write_text(
        json.dumps({"prompt": f"Repeat this: {test_text}", "response": "No."}) + "\n"
        + json.dumps({"prompt": "Say hello.", "response": "Hello."}) + "\n"
    )
    cfg = InstructionConfig(items_per_task=1000, heldout_items_per_task=1000, items_per_document=5, user_files=[str(user_file)])

    output = _build(data_dir, cfg, tmp_path / "out")

    train, heldout = _items(tmp_path / "out", TRAIN_JSONL), _items(tmp_path / "out", HELDOUT_JSONL)
    dropped = [json.loads(line) for line in (tmp_path / "out" / DROPPED_JSONL).read_text().splitlines()]
    assert any(d["origin"] == leak.id and d["split"] == "train" and d["reason"] == CONTAMINATED for d in dropped)
    eval_index = build_index((d.text for s in EVAL_SPLITS for d in iter_split(data_dir, s)), 13)
    assert not overlaps(eval_index, [i.check_text for i in train]).any()
    replay = _items(tmp_path / "out", REPLAY_JSONL)
    assert replay and not overlaps(eval_index, [i.check_text for i in replay]).any()
    assert any(d["origin"] == leak.id and d["split"] == "replay" and d["reason"] == CONTAMINATED for d in dropped)
    # The same overlap seen from the held-out side: the eval stage's rule drops those held-out items too.
    assert any(d["origin"] == held.id and d["split"] == "heldout" and d["reason"] == CONTAMINATED for d in dropped)
    assert not overlaps(build_index((d.text for d in iter_split(data_dir, "train")), 13), [i.check_text for i in heldout]).any()
    assert [i.response for i in train if i.task == "user"] == ["Hello."]
    assert output.metrics["contaminated_items"] == len([d for d in dropped if d["reason"] == CONTAMINATED])
    assert output.counts["train"]["user"]["dropped"][CONTAMINATED] == 1


def test_user_files_take_prompt_response_and_chat_items(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Milton."}]
    path.write_text(json.dumps({"prompt": "Name a poet.", "response": " Milton "}) + "\n\n" + json.dumps({"messages": chat}) + "\n")
    first, second = load_user_items(path)
    assert first.messages == [{"role": "user", "content": "Name a poet."}] and first.response == "Milton"
    assert second.messages == chat[:2] and second.response == "Milton."
    assert (first.task, first.origin, second.origin) == ("user", "items.jsonl:1", "items.jsonl:3")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "items.jsonl:1 is not valid JSON"),
        (json.dumps({"prompt": "Hi"}), "items.jsonl:1: expected string 'prompt' and 'response'"),
        (json.dumps({"messages": [{"role": "user", "content": "Hi"}]}), "must end with the assistant's turn"),
        (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}), "needs a string 'role' and 'content'"),
    ],
)
def test_a_bad_user_line_is_an_error_naming_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_user_items(path)

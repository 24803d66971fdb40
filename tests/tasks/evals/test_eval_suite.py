"""The eval suite built from the held-out splits: deterministic, true to its passages, every item accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval_corpus import SMALL
from tasks.data.document import iter_split
from tasks.evals.config import GatePolicy, SuiteConfig
from tasks.evals.gate import check_policy
from tasks.evals.suite import ITEMS_DIR, SUITE_JSON, SUITE_TAG_ALL, TASKS_DIR, build_suite_files, lines_of, split_last_word


def _items(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / ITEMS_DIR / name).read_text().splitlines()]


@pytest.fixture
def built(curated: Path, tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "suite"
    output = build_suite_files(curated, SMALL, out, out)
    return out, output.counts


def test_same_data_and_seed_build_the_same_items(curated: Path, built: tuple[Path, dict], tmp_path: Path) -> None:
    out, counts = built
    again = tmp_path / "again"
    assert build_suite_files(curated, SMALL, again, again).counts == counts
    for path in sorted((out / ITEMS_DIR).iterdir()):
        assert path.read_bytes() == (again / ITEMS_DIR / path.name).read_bytes()
    other_seed = tmp_path / "seed1"
    build_suite_files(curated, SMALL.model_copy(update={"seed": 1}), other_seed, other_seed)
    assert _items(other_seed, "ladder_next_line.jsonl") != _items(out, "ladder_next_line.jsonl")


def test_tasks_variants_and_every_candidate_accounted_for(built: tuple[Path, dict]) -> None:
    out, counts = built
    info = json.loads((out / SUITE_JSON).read_text())
    assert info["tasks"] == [
        "ladder_last_word", "ladder_last_word_2shot", "ladder_last_word_gen", "ladder_last_word_gen_2shot",
        "ladder_next_line", "ladder_next_line_2shot", "ladder_ppl_prose", "ladder_ppl_verse",
    ]
    assert {"ladder_ppl/bits_per_byte", "ladder_ppl_verse/bits_per_byte", "ladder_last_word_gen/exact_match"} <= set(info["metrics"])
    assert info["higher_is_better"]["ladder_ppl/bits_per_byte"] is False
    for name, task_counts in counts["tasks"].items():
        dropped = sum(task_counts["dropped"].values())
        assert task_counts["candidates"] == dropped + task_counts["unused"] + task_counts["kept"], name
    assert counts["tasks"]["ladder_next_line"]["kept"] == SMALL.items_per_task
    assert counts["tasks"]["ladder_ppl_verse"]["kept"] == SMALL.ppl_docs_per_source
    fewshot = yaml.safe_load((out / TASKS_DIR / "ladder_next_line_2shot.yaml").read_text())
    zero_shot = yaml.safe_load((out / TASKS_DIR / "ladder_next_line.yaml").read_text())
    assert (fewshot["num_fewshot"], zero_shot["num_fewshot"]) == (2, 0)
    assert {yaml.safe_load(path.read_text())["tag"] for path in (out / TASKS_DIR).iterdir()} == {SUITE_TAG_ALL}
    assert Path(fewshot["dataset_kwargs"]["data_files"]["test"]).exists()


def test_variants_score_the_first_items_of_their_family(curated: Path, tmp_path: Path) -> None:
    out = tmp_path / "variants"
    build_suite_files(curated, SMALL.model_copy(update={"variant_items": 5}), out, out)
    every = _items(out, "ladder_last_word.jsonl")
    for task, scored in (("ladder_last_word", every), ("ladder_last_word_2shot", every[:5]), ("ladder_last_word_gen", every[:5])):
        test_file = Path(yaml.safe_load((out / TASKS_DIR / f"{task}.yaml").read_text())["dataset_kwargs"]["data_files"]["test"])
        assert [json.loads(line) for line in test_file.read_text().splitlines()] == scored, task


def test_items_are_true_to_their_passages(curated: Path, built: tuple[Path, dict]) -> None:
    out, _ = built
    passages = {doc.id: lines_of(doc.text) for split in ("test", "validation") for doc in iter_split(curated, split)}
    for item in _items(out, "ladder_next_line.jsonl"):
        doc_id, _, line = item["id"].rpartition("@")
        lines = passages[doc_id]
        assert doc_id.startswith("test/")
        assert item["context"].split("\n") == lines[int(line) - SMALL.context_lines : int(line)]
        assert item["choices"][item["gold"]] == lines[int(line)]
        assert len(set(item["choices"])) == SMALL.num_choices
    for item in _items(out, "ladder_last_word.jsonl"):
        doc_id, _, line = item["id"].rpartition("@")
        head, answer = split_last_word(passages[doc_id][int(line)])
        assert item["answer"] == answer == item["choices"][item["gold"]]
        assert item["context"].endswith(head)
        assert len({c.casefold() for c in item["choices"]}) == SMALL.num_choices
    assert all(item["id"].startswith("validation/") for item in _items(out, "ladder_last_word.fewshot.jsonl"))


def test_bad_config_and_policy_are_refused(built: tuple[Path, dict]) -> None:
    with pytest.raises(ValueError, match="few-shot examples must come from the other held-out split"):
        SuiteConfig(eval_split="test", fewshot_split="test")
    metrics = json.loads((built[0] / SUITE_JSON).read_text())["metrics"]
    check_policy(GatePolicy(), metrics)
    with pytest.raises(ValueError, match="ladder_nope/acc"):
        check_policy(GatePolicy(floors={"ladder_nope/acc": 0.5}), metrics)

"""The align flow end to end on a tiny corpus: SFT beats the base model, DPO's held-out reward margin is positive.

Real components throughout: Prefect (test harness), MLflow (SQLite store), TRL's SFTTrainer
and DPOTrainer, lm-eval for the pretraining evals, the evals flow for the registry. The
base model is a tiny Llama pretrained here for a few seconds on the corpus's train split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.align import align_flow
from tasks.align.checkpoints import load_model, resolve_base
from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.data.version import dataset_version, run_dvc
from tests.tasks.align.align_corpus import one_thread, pretrain_base, train_tokenizer, write_curated

pytestmark = pytest.mark.slow

# Small enough for 2 shared cores; the suite and the gate's floors as the evals flow's own test sets them.
OVERRIDES = [
    "evals.registered_model=ladder-align-test",
    "evals.suite.items_per_task=16",
    "evals.suite.fewshot_pool=6",
    "evals.suite.ppl_docs_per_source=4",
    "evals.suite.num_fewshot=2",
    "evals.gate.floors={ladder_ppl/bits_per_byte: 8.0}",
    # Bounds wide enough that the aligned model is promoted: the test then aligns from the champion.
    "evals.gate.alignment_tax={ladder_ppl/bits_per_byte: 4.0, ladder_next_line/acc_norm: 1.0}",
    "align.instructions.items_per_task=40",
    "align.instructions.heldout_items_per_task=12",
    "align.sft.max_length=192",
    "align.sft.epochs=8",
    "align.sft.lr=3e-3",
    "align.sampling.prompts=160",
]


@pytest.fixture
def single_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_align_flow_sft_beats_base_and_dpo_margin_is_positive(
    workspace: Workspace, prefect_harness: None, single_thread: None, tmp_path: Path
) -> None:
    write_curated(workspace.data, {"train": 10, "validation": 3, "test": 3})
    run_dvc(workspace.root, "add", "-q", "data")
    tokenizer_dir = train_tokenizer(workspace.data, tmp_path / "tokenizer")
    base_dir = pretrain_base(workspace.data, tokenizer_dir, tmp_path / "base", steps=200)

    result = align_flow(profile="tiny", overrides=OVERRIDES, base_model_dir=str(base_dir), dataset_md5=dataset_version(workspace))

    rows = {row["model"]: row for row in result.table}
    assert rows["sft"]["instruct/accuracy"] > rows["base"]["instruct/accuracy"]
    assert result.reward_margin > 0
    assert set(result.tax) == {"sft", "dpo"}
    assert isinstance(result.passed_tax_bound, bool)
    for key in ("sft_model_dir", "dpo_model_dir"):
        assert (Path(getattr(result, key)) / "config.json").is_file()

    client = MlflowClient()
    runs = {run.info.run_id: run for run in client.search_runs([experiment_id(workspace)])}
    align_run = runs[result.mlflow_run_ids["align"]]
    for child in [result.mlflow_run_ids["sft"], *result.mlflow_run_ids["dpo"]]:
        tags = runs[child].data.tags
        assert tags["mlflow.parentRunId"] == align_run.info.run_id
        assert tags["ladder.base_model.dir"] == str(base_dir.resolve())
        assert tags["ladder.data.md5"] == dataset_version(workspace)
    assert {i.dataset.name for i in runs[result.mlflow_run_ids["sft"]].inputs.dataset_inputs} == {"ladder-instructions-train"}
    assert (result.registry.version, result.registry.decision) == ("1", "promoted")

    # Released under its own name; a further round can align from that champion: the model just promoted.
    assert result.registry.registered_model == "ladder-align-test-chat"
    champion = resolve_base.fn(workspace, "ladder-align-test-chat", None, None)
    assert champion.registry_version == "ladder-align-test-chat/1"
    assert champion.training_run_id == result.mlflow_run_ids["dpo"][-1]
    model, tokenizer = load_model(champion.model_dir)
    assert tokenizer.chat_template and model.config.vocab_size == tokenizer.vocab_size

"""The whole pipeline made small: a few texts of the example corpus and every stage's smallest useful settings.

Shared by the pipeline flow's test and the browser test, so that both exercise the same run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.data.corpus import fetch_example_corpus

# Three short works of one source: enough documents to pass the data stage's quality gate, and
# enough works for the split to hold one out for each of validation and test.
EXAMPLE_TEXTS = ("sonnets_gut.txt", "lovers_complaint_gut.txt", "passionate_pilgrim_gut.txt")

# Every stage at the smallest size that still exercises it: one tokenizer candidate, short
# sequences, rungs and a target on a fraction of their Chinchilla budgets, a small eval suite
# and alignment set. The scaling gate is overridden (a ladder this short is not held to its
# prediction); the pipeline test turns the override off to see the gate stop a run.
SMALL_OVERRIDES = (
    "tokenizer.candidates=[bpe]",
    "tokenizer.vocab_sizes=[320]",
    "tokenizer.packing.seq_len=64",
    "scaling.budget=0.25",
    "scaling.evals_per_rung=4",
    "scaling.fit.bootstrap_samples=10",
    "scaling.override_gate=true",
    "scaling.override_reason=small test ladder",
    "train.max_tokens=100000",
    # fp32 is faster than bf16 autocast for models this small on CPU; and one thread: on 2 cores
    # shared with other processes, the target trained 50x slower with two.
    "train.precision=fp32",
    "train.threads_per_process=1",
    "evals.suite.items_per_task=16",
    "evals.suite.fewshot_pool=6",
    "evals.suite.ppl_docs_per_source=4",
    # Two shots of two-line passages: the one held-out work yields only a few lines short enough
    # for three shots of three lines to fit the prompt budget.
    "evals.suite.num_fewshot=2",
    "evals.suite.context_lines=2",
    "evals.run.bootstrap_iters=100",
    # A model trained for seconds scores near chance: only bits per byte has a (loose) floor.
    "evals.gate.floors={ladder_ppl/bits_per_byte: 8.0}",
    "align.instructions.items_per_task=16",
    "align.instructions.heldout_items_per_task=8",
    "align.sft.epochs=1",
    "align.dpo.epochs=1",
    "align.sampling.prompts=16",
    "align.sampling.samples_per_prompt=2",
    "align.sampling.max_new_tokens=16",
    "align.evaluation.max_new_tokens=16",
)


def small_corpus(root: Path) -> Path:
    """Copy ``EXAMPLE_TEXTS`` into ``root/shakespeare/`` (one directory per source); returns ``root``."""
    source = root / "shakespeare"
    source.mkdir(parents=True)
    for name in EXAMPLE_TEXTS:
        shutil.copy(fetch_example_corpus() / "shksprdata" / "texts" / name, source / name)
    return root


def small_overrides(corpus: Path) -> list[str]:
    """``SMALL_OVERRIDES`` reading the corpus at ``corpus`` (see ``small_corpus``)."""
    return [f"data.input.input_dir={corpus}", *SMALL_OVERRIDES]

"""Benchmark of the evaluation stage on the example corpus (a few minutes on 2 cores).

Run: ``.venv/bin/python bench/evals.py [--model-dir DIR] [--steps N]``. The dataset is the
example corpus curated by the data stage's own ``build_dataset`` (default config) into a
temporary directory; the tokenizer is a byte-level BPE of 1024 tokens trained by the
tokenizer stage's ``train_candidate``; the model is ``--model-dir`` (an HF checkpoint with
its tokenizer) or a tiny Llama (d_model 64, 2 layers) trained for ``--steps`` steps of
16 x 128 tokens with plain torch. The suite is the ``tiny`` profile's (``SuiteConfig()``); the
previous one is what the profile built before the gate paired items and stated its power
(64 items per task, 12 documents per source, prompts unbounded). One run prints:

1. The train split's 13-gram index: build CPU time and n-grams per CPU second, ours (numpy hashes, sorted
   set, streamed in batches) against a Python ``set`` of word-tuple 13-grams over the same
   normalised words; and the suite's counts (items kept, dropped by reason).
2. Scoring cost of the suite against the previous one: items, CPU seconds and wall seconds of
   the whole lm-eval run (model load included) with the ``tiny`` profile's HFLM settings
   (``RunConfig()``: batch 32), and the ratio of CPU seconds. The evals stage runs this once per
   candidate (three times in ``make run``).
3. Eval throughput, items per CPU second and per wall second (an item is one scored document, question or prompt),
   on the previous suite, batch 32 against lm-eval's default batch size of 1; the ratio; and the
   largest difference of any metric between the two runs (batching must not change the numbers
   beyond float noise).
4. The eval table of the model on the suite.

Ratios are of CPU seconds (all threads of this process), steadier than wall time on a shared
machine; wall times are printed too. Each eval is timed once, after one untimed warm-up run
(imports, dataset cache). Expect some noise all the same.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ladder.workspace import Workspace
from tasks.data.config import DataConfig
from tasks.data.corpus import example_inputs, fetch_example_corpus
from tasks.data.curate import build_dataset
from tasks.data.dataset import Dataset, dvc_dir_md5
from tasks.data.document import iter_split
from tasks.data.minhash import words
from tasks.evals.config import RunConfig, SuiteConfig
from tasks.evals.contamination import train_index
from tasks.evals.runner import run_lm_eval
from tasks.evals.suite import build_suite

T = TypeVar("T")
# The tiny profile's suite before the gate paired items: fewer items, prompts not bounded by the model's context.
PREVIOUS = SuiteConfig(items_per_task=64, ppl_docs_per_source=12, max_prompt_chars=1_000_000)


def cpu_timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    """``fn(*args)`` and the CPU seconds it took (all threads): steadier than wall time on a shared machine."""
    started = time.process_time()
    result = fn(*args)
    return result, time.process_time() - started


def python_set_index(data_dir: Path, n: int) -> int:
    """The baseline: every normalised word 13-gram of the train split as a tuple in a Python set."""
    grams: set[tuple[str, ...]] = set()
    for doc in iter_split(data_dir, "train"):
        tokens = words(doc.text)
        grams.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(grams)


def train_tiny_model(data_dir: Path, out: Path, steps: int) -> Path:
    """A byte-level BPE tokenizer and a tiny Llama trained briefly on the train split, saved together."""
    import torch
    from transformers import AutoTokenizer

    from models.llama import ModelConfig, build_model
    from tasks.tokenizer.config import TokenizerTrainingConfig
    from tasks.tokenizer.hf import save_hf
    from tasks.tokenizer.train import train_candidate

    tok_cfg = TokenizerTrainingConfig(candidates=["bpe"], vocab_sizes=[1024])
    save_hf(train_candidate("bpe", 1024, (d.text for d in iter_split(data_dir, "train")), tok_cfg), tok_cfg, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = build_model(ModelConfig(vocab_size=1024), seed=0, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ids = torch.tensor(tokenizer("".join(d.text + tokenizer.eos_token for d in iter_split(data_dir, "train")))["input_ids"])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    started = time.perf_counter()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 129, (16,), generator=generator)
        batch = torch.stack([ids[s : s + 128] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"model: tiny Llama trained {steps} steps ({time.perf_counter() - started:.0f} s), last train loss {loss.item():.3f}")
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="HF checkpoint with its tokenizer (default: train one)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the tiny model when no --model-dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ladder-bench-evals-") as tmp:
        root = Path(tmp)
        data_dir = Workspace(root).data
        data_dir.mkdir()
        build_dataset(data_dir, example_inputs(fetch_example_corpus()), DataConfig(), corpus="bench")
        sizes = {split: sum(1 for _ in iter_split(data_dir, split)) for split in ("train", "validation", "test")}
        print(f"dataset: example corpus, documents per split {sizes}")
        model_dir = args.model_dir or train_tiny_model(data_dir, root / "model", args.steps)

        cfg = SuiteConfig()
        words("")  # builds the punctuation table both methods share, outside either timing
        index, ours_s = cpu_timed(train_index, data_dir, cfg.ngram, cfg.index_batch_docs)
        baseline_grams, base_s = cpu_timed(python_set_index, data_dir, cfg.ngram)
        print(f"\ntrain {cfg.ngram}-gram index ({index.documents} documents, {len(index)} distinct n-grams)")
        print(f"  ours       {len(index) / ours_s:12.0f} n-grams/CPU-s ({ours_s:.2f} CPU s, {index.hashes.nbytes / 1e6:.1f} MB of hashes)")
        print(f"  python set {baseline_grams / base_s:12.0f} n-grams/CPU-s ({base_s:.2f} CPU s, {baseline_grams} n-grams)")
        print(f"  ratio ours/python set: {base_s / ours_s:.1f}x")

        suite = build_suite.fn(Workspace(root), cfg, Dataset(dvc_dir_md5(data_dir), data_dir, "bench"))
        print("\nsuite counts (candidates -> dropped by reason, unused, kept):")
        for name, counts in suite.counts["tasks"].items():
            print(f"  {name:<28} {counts['candidates']:5d} -> dropped {counts['dropped'] or {}}, unused {counts['unused']}, kept {counts['kept']}")

        previous = build_suite.fn(Workspace(root), PREVIOUS, Dataset(dvc_dir_md5(data_dir), data_dir, "bench"))
        ours_cfg, baseline_cfg = RunConfig(), RunConfig(batch_size=1)
        run_lm_eval(model_dir, previous, ours_cfg)  # warm-up: imports, dataset cache, kernels; not counted
        large, large_cpu = cpu_timed(run_lm_eval, model_dir, suite, ours_cfg)
        ours, ours_cpu = cpu_timed(run_lm_eval, model_dir, previous, ours_cfg)
        print(f"\nscoring cost of the suite ({len(suite.tasks)} tasks, batch {ours_cfg.batch_size}, model load included)")
        for name, run, cpu in (("tiny suite", large, large_cpu), ("previous suite", ours, ours_cpu)):
            print(f"  {name:<26} {run.items:6d} items {cpu:7.1f} CPU s {run.seconds:7.1f} s wall")
        print(f"  ratio tiny/previous: {large.items / ours.items:.2f}x items for {large_cpu / ours_cpu:.2f}x CPU seconds")

        baseline, baseline_cpu = cpu_timed(run_lm_eval, model_dir, previous, baseline_cfg)
        print(f"\neval throughput on the previous suite ({ours.items} items, model load included)")
        for name, run, cpu in ((f"ours (batch {ours_cfg.batch_size})", ours, ours_cpu), ("lm-eval default (batch 1)", baseline, baseline_cpu)):
            print(f"  {name:<26} {run.items / cpu:8.2f} items/CPU-s ({cpu:.1f} CPU s), {run.items_per_second:8.2f} items/s ({run.seconds:.1f} s wall)")
        print(f"  ratio ours/default: {baseline_cpu / ours_cpu:.2f}x items per CPU second, {baseline.seconds / ours.seconds:.2f}x items/s wall")
        worst = max(ours.table, key=lambda name: abs(ours.table[name].value - baseline.table[name].value))
        print(f"  largest metric difference between the runs: {worst} "
              f"{abs(ours.table[worst].value - baseline.table[worst].value):.2e}")

        print("\neval table (tiny suite)")
        print(f"  {'metric':<40} {'value':>10} {'stderr':>8} {'better':>7} {'items':>6}")
        for name, metric in large.table.items():
            stderr = f"{metric.stderr:.4f}" if metric.stderr is not None else "—"
            print(f"  {name:<40} {metric.value:10.4f} {stderr:>8} {'higher' if metric.higher_is_better else 'lower':>7} {metric.items:6d}")


if __name__ == "__main__":
    main()

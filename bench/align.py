"""Benchmark of SFT throughput: our packed rows and per-item attention mask against TRL's default padding (a minute on 2 cores).

Run: ``.venv/bin/python bench/align.py [--corpus DIR] [--items-per-task N]``. The corpus is the
example corpus (``tasks.data.corpus.fetch_example_corpus()`` or ``--corpus``), cut into
documents by the data stage's ``ingest`` and ``normalize``; instruction items are built from
them by the alignment stage's own task builders (every task family). A BPE tokenizer (the
tokenizer stage's, with the chat template) and a freshly initialised model of the default
``ModelConfig`` shape stand in for a pretrained base: throughput does not depend on the weights.

Both sides train one epoch of TRL's SFTTrainer on the same items, with the same batch size (8
rows), learning rate and loss (on the response tokens only):

- ours: items tokenized and packed by ``tasks.align.encode`` (best-fit decreasing into rows of
  ``max_length`` tokens) and batched by ``PackedCollator`` (a (B, 1, T, T) mask so that packed
  items never attend to each other), passed to SFTTrainer already tokenized;
- TRL's default: the same items as a conversational prompt-completion dataset, tokenized by
  SFTTrainer, one item per row, padded to the longest row of each batch.

Printed per side: tokens/s (real tokens, padding excluded, per CPU second of training),
training time, optimizer steps, padding share, response tokens trained on; then the ratio
ours / TRL. Times are CPU seconds of this process (``time.process_time``) with one torch
thread, the best of two runs: the machine is shared, and wall-clock would measure the neighbours.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.llama import IGNORE_INDEX, ModelConfig, build_model
from tasks.align.config import ALL_TASKS, InstructionConfig, SFTSettings
from tasks.align.encode import encode, pack
from tasks.align.instructions import BUILDERS, Item, Labels
from tasks.align.sft import sft_trainer
from tasks.align.training import quiet, trainer_arguments
from tasks.data.config import InputConfig, NormalizeConfig
from tasks.data.corpus import example_inputs, fetch_example_corpus
from tasks.data.ingest import ingest
from tasks.data.normalize import normalize
from tasks.tokenizer.config import TokenizerTrainingConfig
from tasks.tokenizer.hf import save_hf
from tasks.tokenizer.train import train_candidate

BATCH_SIZE = 8


def build_items(docs: list[Any], per_task: int) -> list[Item]:
    """``per_task`` items of every task family, drawn by seed from the whole corpus."""
    cfg = InstructionConfig(items_per_task=per_task)
    labels = Labels.of(docs)
    items = []
    for task_name in ALL_TASKS:
        rng = random.Random(f"bench:{task_name}")
        built = BUILDERS[task_name](docs, cfg, labels, rng).items
        items += rng.sample(built, min(per_task, len(built)))
    return items


def base_model(docs: list[Any], vocab_size: int, out: Path) -> Path:
    """The tokenizer stage's BPE (chat template included) and a fresh model of the default shape, saved together."""
    from transformers import AutoTokenizer

    cfg = TokenizerTrainingConfig(candidates=["bpe"], vocab_sizes=[vocab_size])
    save_hf(train_candidate("bpe", vocab_size, (d.text for d in docs), cfg), cfg, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = build_model(ModelConfig(vocab_size=vocab_size), seed=0, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    return out


def timed_epoch(make_trainer: Any) -> tuple[float, Any]:
    """The least CPU seconds of two one-epoch trainings (each from the same fresh weights), and the last trainer."""
    best, trainer = float("inf"), None
    for _ in range(2):
        trainer = make_trainer()
        start = time.process_time()
        trainer.train()
        best = min(best, time.process_time() - start)
    return best, trainer


def padding_share(trainer: Any, pad_id: int) -> float:
    """Share of the slots of the trainer's batches (in its own sampling order) that hold padding."""
    slots = real = 0
    for batch in trainer.get_train_dataloader():
        slots += batch["input_ids"].numel()
        real += int((batch["input_ids"] != pad_id).sum())
    return 1 - real / slots


def main() -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="directory laid out like the example corpus")
    parser.add_argument("--items-per-task", type=int, default=64, help="instruction items of each task family")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer and model vocabulary")
    args = parser.parse_args()
    torch.set_num_threads(1)
    docs = normalize(ingest(example_inputs(args.corpus or fetch_example_corpus()), InputConfig()).records, NormalizeConfig()).documents
    items = build_items(docs, args.items_per_task)
    cfg = SFTSettings(batch_size=BATCH_SIZE, epochs=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = base_model(docs, args.vocab_size, Path(tmp) / "base")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)

        def fresh() -> Any:
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

        encoded = [encode(tokenizer, item.messages, item.response) for item in items]
        rows, drops = pack(encoded, cfg.max_length, packing=True)
        ours_s, ours = timed_epoch(lambda: sft_trainer(fresh(), tokenizer, rows, cfg, Path(tmp) / "ours"))
        ours_tokens = sum(len(r["input_ids"]) for r in rows)
        ours_labels = sum(sum(t != IGNORE_INDEX for t in r["labels"]) for r in rows)

        conversations = Dataset.from_list([
            {"prompt": item.messages, "completion": [{"role": "assistant", "content": item.response}]} for item in items
        ])
        trl_args = SFTConfig(**trainer_arguments(cfg, Path(tmp) / "trl"), max_length=cfg.max_length)
        trl_s, trl = timed_epoch(lambda: quiet(SFTTrainer(fresh(), args=trl_args, train_dataset=conversations, processing_class=tokenizer)))
        trl_tokens = sum(len(ids) for ids in trl.train_dataset["input_ids"])
        trl_labels = sum(sum(t != IGNORE_INDEX for t in labels) for labels in trl.train_dataset["labels"])

    print(f"corpus: {len(docs)} documents; {len(items)} instruction items ({args.items_per_task} per task), "
          f"{len(items) - sum(drops.values())} fit max_length={cfg.max_length}; model {ModelConfig(vocab_size=args.vocab_size).d_model}d, "
          f"vocabulary {args.vocab_size}; one epoch, batch {BATCH_SIZE} rows, 1 torch thread")
    print(f"  {'':<34} {'tokens/s':>10} {'train s':>8} {'steps':>6} {'padding':>8} {'response tokens':>16}")
    for name, seconds, trainer, tokens, labels in (
        ("ours (packed, per-item 4D mask)", ours_s, ours, ours_tokens, ours_labels),
        ("TRL default (one item per row)", trl_s, trl, trl_tokens, trl_labels),
    ):
        print(f"  {name:<34} {tokens / seconds:10,.0f} {seconds:8.2f} {trainer.state.global_step:6d} "
              f"{padding_share(trainer, tokenizer.pad_token_id):8.1%} {labels:16,d}")
    print(f"  ratio ours/TRL default: {(ours_tokens / ours_s) / (trl_tokens / trl_s):.2f}x tokens/s, "
          f"{trl_s / ours_s:.2f}x less training time")


if __name__ == "__main__":
    main()

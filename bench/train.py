"""Benchmark of training: ladder's loop against Hugging Face ``Trainer``, attention dense vs block-sparse, MFU.

Run: ``.venv/bin/python bench/train.py [--threads N] [--repeats N]`` (a few minutes on 2 quiet cores).
One run prints:

1. The machine's matmul rate in fp32 and bf16 (2048 x 2048 matmuls, this process's threads)
   per CPU second, the peaks MFU is measured against.
2. At two shapes, on the same packed data (Zipf tokens in documents of 20-300 tokens, document
   masks) and the same batch (bf16 autocast over fp32 weights, fused AdamW, same schedule,
   same initial weights, same rows): tokens/s and MFU of ladder's loop
   (``tasks.train.loop.train`` with its defaults: ``train.attention: auto`` is varlen on CPU,
   each document attended on its own with no mask, the spike guard on, a checkpoint every
   quarter of the run: "ladder guarded") and of ``transformers.Trainer`` (the model's sdpa
   kernel with the dense (1, T, T) mask per row, derived on the fly as ladder's loader does; one
   plain process, as its users run it on CPU). The shapes: today's (d_model 256, 4 layers,
   sequences of 128) and a larger one (d_model 512, 4 layers, sequences of 512). Also ladder
   with ``train.compile`` ("compiled"; its compile, about a minute, is in the first interval,
   which the rate leaves out) and with ``train.attention: dense`` ("dense": the same mask as the
   Trainer's), and the default and compiled runs "bare" (no guard, no checkpoints: the step
   alone); at today's shape also with the guard alone ("guard"), so the guard's and the
   checkpoints' costs show. The Trainer runs twice: saving a checkpoint as often as ladder does
   ("HF Trainer saving": its model, optimizer, scheduler and RNG states) and not at all ("HF
   Trainer"). Each ladder row's ratio is against the Trainer run with the same checkpoints, so
   that the ratio measures the code, not the settings.
3. Attention alone at sequence 512, 1024 and 2048 (bf16, 8 heads of 64, 4096 tokens per call,
   documents of 100-500 tokens), each including the making of its mask from the document ids:
   the dense mask with sdpa (``train.attention: dense``) against FlexAttention over
   ``document_block_mask`` (``flex``), forward only, since torch has no FlexAttention backward
   on CPU; and forward + backward, the cost of a training step's attention, dense against
   varlen (``document_segments`` made from the ids included). The first FlexAttention call
   compiles its kernel (about 30 s, not in the figures).

Throughput is tokens per CPU second (``time.process_time``, as ``bench/timing.py``), not wall
time: the machine is shared, and ratios of CPU times measured in the same run are what hold.
Tokens/s is the median over the intervals after the first (which holds start-up); each run is
made ``--repeats`` times, interleaved, and the best counts. MFU counts the analytic training FLOPs
per token (``models.llama.flops_per_token`` with the output projection and dense causal
attention) against the measured peak, both per CPU second.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from ladder.config import build
from models.llama import (
    build_model,
    causal_lm_loss,
    count_params,
    document_block_mask,
    document_segments,
    flops_per_token,
    varlen_attention_forward,
)
from tasks.tokenizer.shards import write_packed
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve_model_config
from tasks.train.engine import attention_kernel
from tasks.train.loader import PackedLoader, document_inputs, document_mask
from tasks.train.loop import train
from tasks.train.perf import matmul_flops
from tasks.train.shards import PackedShards
from timing import best_time  # bench/ is on sys.path when a benchmark runs as a script

VOCAB = 1024
ATTENTION_SEQ_LENS = (512, 1024, 2048)
ATTENTION_TOKENS, ATTENTION_HEADS, HEAD_DIM = 4096, 8, 64


@dataclass(frozen=True)
class Shape:
    """A model, sequence length, batch and run length to compare the loops at."""

    name: str
    model: dict[str, Any]
    seq_len: int
    batch: int
    steps: int

    @property
    def interval(self) -> int:
        return self.steps // 4


SHAPES = (
    Shape("today", {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 4, "intermediate_size": 688}, 128, 8, 40),
    Shape("larger", {"d_model": 512, "n_layers": 4, "n_heads": 8, "n_kv_heads": 8, "intermediate_size": 1408}, 512, 4, 12),
)


def write_data(root: Path, seq_len: int, sequences: int) -> PackedShards:
    """Zipf-distributed tokens in documents of 20-300 tokens, packed like the tokenizer stage packs."""
    rng = np.random.default_rng(0)

    def docs():
        total, i = 0, 0
        while total < sequences * seq_len:
            n = int(rng.integers(20, 300))
            ids = (rng.zipf(1.2, n) % (VOCAB - 2) + 2).tolist()
            total += n + 1
            i += 1
            yield {"id": f"bench-{i}", "source": "zipf"}, ids

    for split in ("train", "validation"):
        write_packed(root / split, docs(), seq_len, pad_id=0, boundary_id=1, vocab_size=VOCAB)
    return PackedShards(root / "train")


def ladder_config(shape: Shape, peak_tflops: float, guard: bool = True, checkpoints: bool = True, **extra: Any) -> TrainConfig:
    return build(TrainConfig, {
        "model": {**shape.model, "max_seq_len": shape.seq_len},
        "global_batch_size": shape.batch,
        "micro_batch_size": shape.batch,
        "max_steps": shape.steps,
        "precision": "bf16",
        "log_every": shape.interval,
        "peak_tflops": peak_tflops,
        "eval": {"every_steps": 10**9, "batches": 1},
        "spike_guard": {"enabled": guard},
        "checkpoint": {"every_steps": shape.interval if checkpoints else 10**9, "keep_last": 2},
        **extra,
    })


def run_ladder(root: Path, cfg: TrainConfig, out: Path) -> float:
    """Tokens per CPU second of ``train``: its speed monitor's clock made the process's CPU clock."""
    with mock.patch("tasks.train.callbacks.time.perf_counter", time.process_time):
        result = train(cfg, root / "train", root / "validation", out)
    return result["tokens_per_s"]


@contextmanager
def plain_process() -> Iterator[None]:
    """Hide the variables ladder's one-process group left behind (RANK, WORLD_SIZE, ...): with
    them, accelerate takes the process for a CPU cluster, wraps the model in DDP over gloo (whose
    threads spin on the CPU clock) and resets torch's threads to the core count."""
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": str(torch.get_num_threads())}):
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)
        yield


def run_trainer(root: Path, shape: Shape, cfg: TrainConfig, out: Path, saving: bool) -> float:
    """``transformers.Trainer`` on the same batches, in one plain process as its users run it on
    CPU, saving a checkpoint every ``shape.interval`` steps when ``saving``; tokens per CPU second
    from its step-end callbacks."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    shards = PackedShards(root / "train")
    model = build_model(resolve_model_config(cfg, shards), seed=cfg.seed)
    # The rows ladder's loader visits, turned into model inputs on the fly as ladder's loader does.
    loader = PackedLoader(shards, shape.batch, cfg.seed)
    rows = np.concatenate([batch.rows for batch in itertools.islice(loader, shape.steps)])

    class PackedRows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            tokens = shards.tokens[rows[i : i + 1]].astype(np.int64)  # (1, T)
            derived = document_inputs(tokens, shards.doc_index[rows[i : i + 1]].astype(np.int64))
            return {
                "input_ids": torch.from_numpy(tokens[0]),
                "labels": torch.from_numpy(derived["labels"][0]),
                "position_ids": torch.from_numpy(derived["position_ids"][0]),
                "attention_mask": torch.from_numpy(derived["attention_mask"][0]),  # (1, T, T)
            }

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.process_time())

    args = TrainingArguments(
        output_dir=str(out), max_steps=shape.steps, per_device_train_batch_size=shape.batch,
        learning_rate=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay, adam_beta1=cfg.optimizer.betas[0],
        adam_beta2=cfg.optimizer.betas[1], warmup_steps=cfg.schedule.warmup_steps, lr_scheduler_type="cosine",
        max_grad_norm=cfg.grad_clip, optim="adamw_torch_fused", bf16=True, use_cpu=True, report_to=[],
        save_strategy="steps" if saving else "no", save_steps=shape.interval,
        logging_strategy="no", dataloader_num_workers=0, seed=cfg.seed, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=PackedRows(), callbacks=[Clock()],
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: causal_lm_loss(outputs.logits, labels, 0.0)[0],
    )
    trainer.train()
    tokens = shape.interval * shape.batch * shape.seq_len
    k = shape.interval
    return statistics.median(tokens / (stamps[i + k] - stamps[i]) for i in range(k - 1, len(stamps) - k, k))


# The Trainer run each ladder run is compared with: the one that checkpoints as it does.
TRAINER, TRAINER_SAVING = "HF Trainer", "HF Trainer saving"


def compare_loops(shape: Shape, peaks: dict[str, float], repeats: int) -> None:
    """Ladder's loop against ``Trainer`` at ``shape``: a table of tokens/s and MFU, then the ratios."""
    peak = peaks["bf16"] / 1e12
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, shape.seq_len, sequences=shape.batch * shape.steps * 2)
        cfg = ladder_config(shape, peak)
        model_cfg = resolve_model_config(cfg, PackedShards(root / "train"))
        runs: dict[str, TrainConfig | bool] = {
            "ladder guarded": cfg,
            "ladder compiled": ladder_config(shape, peak, compile=True),
            "ladder dense": ladder_config(shape, peak, attention="dense"),
            "ladder bare": ladder_config(shape, peak, guard=False, checkpoints=False),
            "ladder compiled bare": ladder_config(shape, peak, guard=False, checkpoints=False, compile=True),
            TRAINER_SAVING: True,
            TRAINER: False,
        }
        if shape is SHAPES[0]:
            runs["ladder guard"] = ladder_config(shape, peak, checkpoints=False)
        best: dict[str, float] = {}
        for attempt, (name, run) in itertools.product(range(repeats), runs.items()):
            out = root / f"{name.replace(' ', '-')}-{attempt}"
            if isinstance(run, bool):
                with plain_process():
                    rate = run_trainer(root, shape, cfg, out, saving=run)
            else:
                rate = run_ladder(root, run, out)
            best[name] = max(best.get(name, 0.0), rate)
    per_token = flops_per_token(model_cfg, shape.seq_len, include_logits=True)
    params = count_params(model_cfg)
    kernel = attention_kernel(cfg.attention, torch.device("cpu"), model_cfg.attn_implementation, cfg.precision)
    print(f"\n{shape.name} shape: d_model {model_cfg.d_model}, {model_cfg.n_layers} layers, "
          f"{params['non_embedding'] / 1e6:.2f}M non-embedding + {params['embedding'] / 1e6:.2f}M embedding parameters, "
          f"{per_token / 1e6:.1f} MFLOP/token; batch {shape.batch} x {shape.seq_len}, {shape.steps} steps, "
          f"checkpoints every {shape.interval}; ladder's default attention: {kernel} (train.attention={cfg.attention})")
    print(f"{'':27} {'tokens/CPU-s':>12} {'MFU(bf16)':>10} {'MFU(fp32)':>10}")
    for name, rate in best.items():
        print(f"{name:27} {rate:12.0f} {per_token * rate / peaks['bf16']:10.1%} {per_token * rate / peaks['fp32']:10.1%}")
    for name, run in runs.items():
        if isinstance(run, TrainConfig):
            baseline = TRAINER_SAVING if run.checkpoint.every_steps == shape.interval else TRAINER
            print(f"ratio {name} / {baseline}: {best[name] / best[baseline]:.2f}")
    if "ladder guard" in best:
        for name, what in (("ladder guard", "the spike guard"), ("ladder guarded", f"guard + a checkpoint every {shape.interval} steps")):
            ratio = best[name] / best["ladder bare"]
            print(f"ratio {name} / bare: {ratio:.3f} ({what} costs {1 - ratio:.1%} of throughput)")
    ratio = best[TRAINER_SAVING] / best[TRAINER]
    print(f"ratio {TRAINER_SAVING} / {TRAINER}: {ratio:.3f} (its checkpoints cost {1 - ratio:.1%} of throughput)")


def document_ids(batch: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T) document ids of rows packed with documents of 100-500 tokens."""
    lengths = rng.integers(100, 500, size=(batch, seq_len // 100 + 1))
    ends = np.cumsum(lengths, axis=1)
    return np.stack([np.searchsorted(row_ends, np.arange(seq_len), side="right") for row_ends in ends])


def compare_attention() -> None:
    """One attention call: the dense mask with sdpa against FlexAttention with the block-sparse mask."""
    from torch.nn.attention.flex_attention import flex_attention

    sdpa = torch.nn.functional.scaled_dot_product_attention
    flex = torch.compile(flex_attention)
    rng = np.random.default_rng(0)
    print(f"\nattention, bf16, {ATTENTION_HEADS} heads of {HEAD_DIM}, {ATTENTION_TOKENS} tokens per call, documents of "
          "100-500 tokens, mask making included (CPU ms):")
    print(f"{'seq':>6} {'batch':>6} {'dense fwd':>10} {'flex fwd':>10} {'ratio':>7} {'tiles visited':>14} {'dense fwd+bwd':>14} "
          f"{'varlen fwd+bwd':>15} {'ratio':>7}")
    for seq_len in ATTENTION_SEQ_LENS:
        batch = ATTENTION_TOKENS // seq_len
        docs = document_ids(batch, seq_len, rng)
        q, k, v = (torch.randn(batch, ATTENTION_HEADS, seq_len, HEAD_DIM, dtype=torch.bfloat16) for _ in range(3))
        trained = [x.detach().requires_grad_() for x in (q, k, v)]

        def dense_forward() -> torch.Tensor:
            return sdpa(q, k, v, attn_mask=torch.from_numpy(document_mask(docs)))  # mask (B, 1, T, T)

        def flex_forward() -> torch.Tensor:
            return flex(q, k, v, block_mask=document_block_mask(torch.from_numpy(docs)))

        def dense_step() -> None:
            sdpa(*trained, attn_mask=torch.from_numpy(document_mask(docs))).sum().backward()

        def varlen_step() -> None:
            out, _ = varlen_attention_forward(
                None, *trained, None, scaling=HEAD_DIM**-0.5, document_segments=document_segments(docs)
            )  # (B, T, H, D)
            out.sum().backward()

        torch.testing.assert_close(flex_forward(), dense_forward(), atol=2e-2, rtol=2e-2)  # and warms both up
        dense_step()
        varlen_step()
        dense_s, _ = best_time(dense_forward, repeat=3)
        flex_s, _ = best_time(flex_forward, repeat=3)
        step_s, _ = best_time(dense_step, repeat=3)
        varlen_s, _ = best_time(varlen_step, repeat=3)
        visited = 1 - document_block_mask(torch.from_numpy(docs)).sparsity() / 100
        print(f"{seq_len:6} {batch:6} {dense_s * 1e3:10.1f} {flex_s * 1e3:10.1f} {dense_s / flex_s:6.2f}x {visited:13.0%} "
              f"{step_s * 1e3:14.1f} {varlen_s * 1e3:15.1f} {step_s / varlen_s:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each configuration; the best counts.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {name: matmul_flops(dtype, seconds=1.0, clock=time.process_time)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/CPU-s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/CPU-s")
    compare_attention()
    for shape in SHAPES:
        compare_loops(shape, peaks, args.repeats)


if __name__ == "__main__":
    main()

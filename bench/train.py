"""Benchmark of the training loop: throughput, MFU, against Hugging Face ``Trainer``, guard overhead.

Run: ``.venv/bin/python bench/train.py [--steps 40] [--threads N]`` (about two minutes on 2 cores).
One run, on the same model (Llama, d_model 256, 4 layers, vocabulary 1024, about 3.4M
non-embedding parameters), the same packed data (sequences of 128 tokens with document masks)
and the same batch (8 sequences, bf16 autocast over fp32 weights, fused AdamW), prints:

1. The machine's matmul rate in fp32 and bf16 (2048 x 2048 matmuls, this process's threads),
   the peaks MFU is measured against.
2. Tokens/s and MFU of ladder's loop (``tasks.train.loop.train``, DeepSpeed ZeRO-0 engine)
   with the spike guard off and no checkpoints ("bare"), the guard alone ("guard"), and the
   guard plus a checkpoint every 10 steps ("guarded": the default behaviour, each checkpoint
   written in full, fsynced and checksummed).
3. Tokens/s and MFU of ``transformers.Trainer`` training the same model from the same
   initial weights on the same rows (inputs, document masks and loss function, derived per
   row on the fly as ladder's loader does), with the same optimizer and schedule settings.
4. Ratios: ladder / Trainer, guard / bare, guarded / bare.

Tokens/s is the median over 10-step intervals after the first (which holds start-up); each
configuration runs twice, interleaved, and the better run counts, since the machine may be
shared and neighbours slow any single run. MFU counts the model's training FLOPs per token
(``models.llama.flops_per_token`` with the output projection) against the measured peak.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ladder.config import build
from models.llama import build_model, causal_lm_loss, count_params, flops_per_token
from tasks.tokenizer.shards import write_packed
from tasks.train.loader import PackedLoader, document_inputs
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve_model_config
from tasks.train.loop import train
from tasks.train.perf import matmul_flops
from tasks.train.shards import PackedShards

VOCAB, SEQ_LEN, BATCH = 1024, 128, 8
MODEL = {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 4, "intermediate_size": 688, "max_seq_len": SEQ_LEN}
INTERVAL = 10


def write_data(root: Path, sequences: int) -> PackedShards:
    """Zipf-distributed tokens in documents of 20-300 tokens, packed like the tokenizer stage packs."""
    rng = np.random.default_rng(0)

    def docs():
        total, i = 0, 0
        while total < sequences * SEQ_LEN:
            n = int(rng.integers(20, 300))
            ids = (rng.zipf(1.2, n) % (VOCAB - 2) + 2).tolist()
            total += n + 1
            i += 1
            yield {"id": f"bench-{i}", "source": "zipf"}, ids

    for split in ("train", "validation"):
        write_packed(root / split, docs(), SEQ_LEN, pad_id=0, boundary_id=1, vocab_size=VOCAB)
    return PackedShards(root / "train")


def ladder_config(steps: int, guarded: bool, peak_tflops: float, checkpoints: bool | None = None) -> TrainConfig:
    checkpoints = guarded if checkpoints is None else checkpoints
    return build(TrainConfig, {
        "model": MODEL,
        "global_batch_size": BATCH,
        "micro_batch_size": BATCH,
        "max_steps": steps,
        "precision": "bf16",
        "log_every": INTERVAL,
        "peak_tflops": peak_tflops,
        "eval": {"every_steps": 10**9, "batches": 1},
        "spike_guard": {"enabled": guarded},
        "checkpoint": {"every_steps": INTERVAL if checkpoints else 10**9, "keep_last": 2},
    })


def run_ladder(root: Path, cfg: TrainConfig, out: Path) -> float:
    result = train(cfg, root / "train", root / "validation", out)
    return result["tokens_per_s"]


def run_trainer(root: Path, steps: int, cfg: TrainConfig, out: Path) -> float:
    """``transformers.Trainer`` on the same batches; tokens/s from its step-end callbacks."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    shards = PackedShards(root / "train")
    model = build_model(resolve_model_config(cfg, shards), seed=cfg.seed)
    # The rows ladder's loader visits, turned into model inputs on the fly as ladder's loader does.
    loader = PackedLoader(shards, BATCH, cfg.seed)
    rows = np.concatenate([batch.rows for batch in itertools.islice(loader, steps)])

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
            stamps.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay, adam_beta1=cfg.optimizer.betas[0], adam_beta2=cfg.optimizer.betas[1],
        warmup_steps=cfg.schedule.warmup_steps, lr_scheduler_type="cosine", max_grad_norm=cfg.grad_clip,
        optim="adamw_torch_fused", bf16=True, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, seed=cfg.seed, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=PackedRows(), callbacks=[Clock()],
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: causal_lm_loss(outputs.logits, labels, 0.0)[0],
    )
    trainer.train()
    rates = [INTERVAL * BATCH * SEQ_LEN / (stamps[i + INTERVAL] - stamps[i]) for i in range(INTERVAL - 1, len(stamps) - INTERVAL, INTERVAL)]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per run (multiple of 10).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_flops(torch.float32, seconds=1.0), "bf16": matmul_flops(torch.bfloat16, seconds=1.0)}
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, sequences=BATCH * args.steps * 2)
        cfg = ladder_config(args.steps, True, peaks["bf16"] / 1e12)
        model_cfg = resolve_model_config(cfg, PackedShards(root / "train"))
        per_token = flops_per_token(model_cfg, SEQ_LEN, include_logits=True)
        best: dict[str, float] = {}
        for attempt in range(2):
            peak = peaks["bf16"] / 1e12
            for name, run in (
                ("ladder bare", lambda out: run_ladder(root, ladder_config(args.steps, False, peak), out)),
                ("ladder guard", lambda out: run_ladder(root, ladder_config(args.steps, True, peak, checkpoints=False), out)),
                ("ladder guarded", lambda out: run_ladder(root, ladder_config(args.steps, True, peak), out)),
                ("HF Trainer", lambda out: run_trainer(root, args.steps, cfg, out)),
            ):
                rate = run(root / f"{name.replace(' ', '-')}-{attempt}")
                best[name] = max(best.get(name, 0.0), rate)
    params = count_params(model_cfg)
    print(f"model: d_model {model_cfg.d_model}, {model_cfg.n_layers} layers, {params['non_embedding'] / 1e6:.2f}M non-embedding "
          f"+ {params['embedding'] / 1e6:.2f}M embedding parameters, {per_token / 1e6:.1f} MFLOP/token; "
          f"batch {BATCH} x {SEQ_LEN}, bf16 autocast, {args.steps} steps")
    print(f"{'':16} {'tokens/s':>10} {'MFU(bf16)':>10} {'MFU(fp32)':>10}")
    for name, rate in best.items():
        print(f"{name:16} {rate:10.0f} {per_token * rate / peaks['bf16']:10.1%} {per_token * rate / peaks['fp32']:10.1%}")
    print(f"ratio ladder bare / HF Trainer:    {best['ladder bare'] / best['HF Trainer']:.2f}")
    print(f"ratio ladder guarded / HF Trainer: {best['ladder guarded'] / best['HF Trainer']:.2f}")
    guard = best["ladder guard"] / best["ladder bare"]
    ratio = best["ladder guarded"] / best["ladder bare"]
    print(f"ratio ladder guard / bare:         {guard:.3f} (the spike guard alone costs {1 - guard:.1%} of throughput)")
    print(f"ratio ladder guarded / bare:       {ratio:.3f} (spike guard + a checkpoint every {INTERVAL} steps "
          f"cost {1 - ratio:.1%} of throughput)")


if __name__ == "__main__":
    main()

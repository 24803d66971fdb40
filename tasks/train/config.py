"""The training stage's config section. Defaults are the ``tiny`` profile: a minute on 2 CPU cores.

The global batch (sequences per optimizer step) is fixed by the config, not by how many
processes run it: each process takes ``micro_batch_size`` sequences per forward pass and
gradient accumulation makes up the rest, so 1 and N processes train on the same batches.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ladder.config import Section
from models.llama import ModelConfig

FaultKind = Literal["random_batch", "shard_window", "lr_multiply", "nan_loss", "grad_spike"]


class OptimizerConfig(Section):
    """AdamW. Weight decay applies to matrices only, never to norms' gains."""

    lr: float = Field(3e-3, gt=0, description="Peak learning rate, reached at the end of warmup.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay of 2-D weights (embeddings and linears).")


class ScheduleConfig(Section):
    """Linear warmup, then cosine decay or warmup-stable-decay (WSD)."""

    kind: Literal["cosine", "wsd"] = Field("cosine", description="cosine: decay over all steps after warmup; wsd: hold the peak, decay at the end.")
    warmup_steps: int = Field(20, ge=0, description="Steps of linear warmup from 0 to the peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: share of all steps spent in the final linear decay (the rest after warmup is stable)."
    )


class CheckpointConfig(Section):
    """Atomic checkpoints of everything a resume or a rollback needs."""

    every_steps: int = Field(50, ge=1, description="Save after every this many optimizer steps (and at step 0).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; the newest known-good one is kept besides.")
    keep_steps: list[int] = Field(
        [], description="Steps also checkpointed and kept past keep_last (a rollback still discards those after the "
        "checkpoint it returns to): where a ladder rung's WSD decay branches start from its stable run "
        "(tasks.scaling, design=branches).",
    )


class SpikeGuardConfig(Section):
    """Detects loss spikes and rolls back past the data that caused them (PaLM's recipe, automated)."""

    enabled: bool = Field(True, description="Watch every step; off leaves only checkpoints and resume.")
    window: int = Field(32, ge=4, description="Trailing clean steps whose median and MAD define the threshold.")
    k: float = Field(
        6.0, gt=0, description="A value above median + k x sigma of the window is a spike (sigma: robust step-to-step noise)."
    )
    min_rel_jump: float = Field(
        0.2, ge=0, description="...and above median x (1 + this): a very quiet window alone does not make noise a spike."
    )
    warmup_steps: int = Field(20, ge=0, description="Steps before threshold checks start (NaN/Inf count from step 1).")
    watch_grad_norm: bool = Field(True, description="Test the gradient norm too (its spikes often come before the loss's).")
    grad_norm_min_ratio: float = Field(
        10.0, ge=1, description="...where a spike must also exceed this multiple of the window's median norm: norms "
        "swing 4x from step to step early on (seen on the example corpus), and clipping bounds what such a step does.",
    )
    rollback_margin_steps: int = Field(
        4, ge=0, description="Optimizer steps' worth of data skipped after the spike step's own batches, besides all "
        "since the checkpoint rolled back to: bad data often runs on past the first step that shows it.",
    )
    lr_scale: float = Field(0.5, gt=0, le=1, description="Learning-rate factor after a rollback; 1 keeps the schedule.")
    lr_scale_steps: int = Field(20, ge=0, description="Steps after the rollback point during which the factor applies.")
    max_retries: int = Field(3, ge=0, description="Rollbacks allowed in a run; one more spike fails the task with a report of every attempt.")
    skip_window: bool = Field(
        True, description="Skip the suspect data window on a rollback. Off, a rollback only restores and cuts the LR and "
        "replays the same batches: it exists to show that skipping is what keeps data-borne spikes from coming back.",
    )
    rare_k: int = Field(10, ge=1, description="Evidence: a token seen fewer than this many times in the training shards is rare.")


class FaultConfig(Section):
    """A fault injected for tests and demos: in the data (it stays there) or in one step (it fires once)."""

    step: int = Field(
        ge=1, description="Optimizer step (1-based) whose learning rate or loss is corrupted, or for the data faults "
        "(random_batch, shard_window), the first step whose batches (as numbered in a run that skips none) hold the "
        "bad tokens, whichever step trains them.",
    )
    kind: FaultKind = Field(
        description="random_batch: uniform random tokens in the batches, in memory; shard_window: the shard rows of "
        "those batches overwritten in a copy of the training shards made for the run; lr_multiply: scale the LR by "
        "factor; nan_loss: NaN loss; grad_spike: factor added to one element of the step's gradient, the loss "
        "unchanged (a bit flip's footprint)."
    )
    steps: int = Field(1, ge=1, description="Data faults: consecutive steps, from step, whose batches hold the bad tokens.")
    mode: Literal["garbage", "repeat"] = Field(
        "garbage", description="shard_window: garbage writes uniform random token ids, repeat one id (drawn from the "
        "seed) over every token of the rows; padding stays padding either way.",
    )
    factor: float = Field(
        100.0, gt=0, description="lr_multiply: the learning-rate multiplier for that step; grad_spike: the gradient value injected."
    )


class EvalConfig(Section):
    """Validation loss on a fixed prefix of the validation shards."""

    every_steps: int = Field(50, ge=1, description="Evaluate after every this many steps, and at the end.")
    batches: int = Field(
        4, ge=1, description="Validation batches of global_batch_size sequences (the same ones every time, on any number of processes)."
    )


class InitConfig(Section):
    """Continued pretraining: start from an HF-format checkpoint instead of from scratch."""

    from_dir: str | None = Field(None, description="Local directory written by save_pretrained; its config replaces `model`.")
    new_tokens: list[str] = Field(
        [], description="Tokens added to the tokenizer; their embedding rows start as the mean of the old rows."
    )


class ReplayConfig(Section):
    """Mix a share of old data into continued pretraining."""

    shards_dir: str | None = Field(None, description="Packed shards (one split's directory) of the data to replay.")
    share: float = Field(0.0, ge=0, lt=1, description="Fraction of batches drawn from the replay shards, spread evenly.")


class TrainConfig(Section):
    """The training stage: DeepSpeed engine, schedule, checkpoints, spike guard, evaluation."""

    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="Model shape; vocab_size, when left at its default, is taken from the shards' tokenizer.",
    )
    target_params: float | None = Field(
        None, gt=0, description="Non-embedding parameter target: models.sizes.size_for then picks width, depth and heads."
    )
    global_batch_size: int = Field(16, ge=1, description="Sequences per optimizer step, over all processes.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass per process; accumulation makes up the global batch.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps to train (the schedule's length).")
    max_tokens: int | None = Field(
        None, ge=1, description="Token budget instead of max_steps: steps = ceil(max_tokens / (global batch x seq_len))."
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="AdamW hyperparameters.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Learning-rate schedule.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this; 0 turns clipping off.")
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="bf16: autocast matmuls to bfloat16 over fp32 weights and optimizer state (CPU and GPU); fp32: none."
    )
    attention: Literal["auto", "dense", "flex", "varlen"] = Field(
        "auto",
        description="How packed documents are kept apart. dense: a (B, 1, T, T) mask for model.attn_implementation, "
        "whose memory grows with T^2 whatever the documents; flex: a block-sparse document mask (128-token tiles) run "
        "by PyTorch FlexAttention, which skips the tiles no document spans (training needs a GPU: torch has no "
        "FlexAttention backward on CPU; its first call compiles for about 30 s); varlen: no mask, each document "
        "attended on its own, documents of like length batched together (models.llama.varlen_attention_forward), "
        "work growing with the documents' lengths squared (a batch of short rows that would cost more so is "
        "attended row by row with its mask); the same loss curve as dense to float rounding; on CPU its bf16 steps "
        "were 1.26x and 1.34x as fast as dense's at bench/train.py's two shapes, its fp32 steps 0.92x at the tiny "
        "profile's top rung. auto: flex on a GPU; on a CPU varlen in bf16, dense in fp32.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model: fused kernels after a compile of a minute or more on 2 CPU cores, which "
        "the tiny profile's runs would not win back. When compiling fails, training goes on uncompiled with a warning.",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage: 0 data parallel, 1 optimizer, 2 +gradients, 3 +weights sharded.")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON with the cluster tuning (buckets, overlap); default infra/deepspeed/zero<stage>.json."
    )
    nproc_per_node: int = Field(1, ge=1, description="Processes launched (torchrun); the global batch stays the same.")
    threads_per_process: int | None = Field(
        None, ge=1,
        description="CPU threads of each training process (OMP_NUM_THREADS); null: the cores shared evenly among "
        "the processes (torchrun alone would give each one thread). "
        "Runs side by side (ladder rungs) share the cores this way instead of fighting over them.",
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoint cadence and retention.")
    spike_guard: SpikeGuardConfig = Field(default_factory=SpikeGuardConfig, description="Loss-spike detection and rollback.")
    faults: list[FaultConfig] = Field([], description="Faults to inject (tests and demos).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Validation cadence and size.")
    init: InitConfig = Field(default_factory=InitConfig, description="Continued pretraining from a checkpoint.")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Old data mixed in for continued pretraining.")
    seed: int = Field(0, ge=0, description="Seeds the model init, the loader's order and the injected faults.")
    deterministic: bool = Field(
        False,
        description="Deterministic kernels (torch.use_deterministic_algorithms; on a GPU also "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8), which bit-identical reruns and resumes on a GPU need (CPU runs are exact "
        "without it; tests/tasks/train/test_kill_anywhere.py shows SIGKILL-and-resume ending bit-identical there). "
        "Costs on a GPU, per PyTorch's reproducibility notes (not measured here): slower steps wherever the fast "
        "kernel is a nondeterministic one (scatter/index_add-style ops and their backward passes), every new "
        "tensor filled once (torch.utils.deterministic.fill_uninitialized_memory), an error instead of a run for an "
        "op that has no deterministic CUDA kernel, and about 24 MiB more GPU memory for cuBLAS's fixed workspace.",
    )
    log_every: int = Field(10, ge=1, description="Steps between metric logs (loss, lr, grad norm, tokens/s, MFU).")
    peak_tflops: float | None = Field(
        None, gt=0, description="Per-process peak for MFU; default: this machine's matmul rate in `precision`, measured on its "
        "first run and remembered (tasks.train.perf.machine_peak).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.global_batch_size % (self.micro_batch_size * self.nproc_per_node):
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size x nproc_per_node "
                f"= {self.micro_batch_size} x {self.nproc_per_node}: change one of them"
            )
        if bool(self.replay.shards_dir) != (self.replay.share > 0):
            raise ValueError("replay needs both shards_dir and a share > 0 (or neither)")
        if self.init.new_tokens and not self.init.from_dir:
            raise ValueError("init.new_tokens extends a pretrained model's vocabulary: set init.from_dir too")
        return self

    @property
    def grad_accumulation(self) -> int:
        """Micro-batches per optimizer step on each process."""
        return self.global_batch_size // (self.micro_batch_size * self.nproc_per_node)

    def total_steps(self, seq_len: int) -> int:
        """Optimizer steps of the run: ``max_steps``, or what the token budget buys."""
        if self.max_tokens is None:
            return self.max_steps
        return -(-self.max_tokens // (self.global_batch_size * seq_len))

"""The training engine: process group, deterministic kernels, DeepSpeed where it is needed, AdamW, one training step.

Precision ``bf16`` is ``torch.autocast`` over fp32 weights, not DeepSpeed's bf16 mode (bf16
weights with fp32 masters inside the optimizer): with fp32 weights the model's parameters
*are* the master weights on every ZeRO stage, so a checkpoint of the weights plus the base
optimizer's state is exact, and the same mode runs on CPU and GPU.

Checkpoints never use ``engine.save_checkpoint``: it pickles optimizer objects that only
``torch.load(weights_only=False)`` can read. The engine instead exposes the weights (saved
as safetensors) and the base AdamW's state dict (tensors and numbers, loadable with
``weights_only=True``), per rank when ZeRO partitions it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.llama import causal_lm_loss, varlen_kernel
from tasks.train.config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tasks.train.loader import Batch

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACE = ":4096:8"  # PyTorch's reproducibility notes: about 24 MiB more GPU memory than the default
# Keys the TrainConfig owns; a DeepSpeed file that sets them would be a second source of truth.
OWNED_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "optimizer", "scheduler", "bf16", "fp16", "torch_autocast",
}


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def deterministic_algorithms(enabled: bool, cuda: bool) -> Iterator[None]:
    """PyTorch's deterministic kernels inside the block when ``enabled`` (``train.deterministic``).

    With ``cuda``, cuBLAS also gets a fixed workspace layout (``CUBLAS_WORKSPACE_CONFIG``), without
    which PyTorch refuses deterministic matmuls; cuBLAS reads it when its first handle is made,
    so the block must start before the process's first CUDA matmul. Both are as they were
    after the block, for callers that run ``train`` inside their own process (tests, benchmarks).
    """
    if not enabled:
        yield
        return
    was_enabled = torch.are_deterministic_algorithms_enabled()
    workspace = os.environ.get(CUBLAS_WORKSPACE)
    if cuda:
        os.environ[CUBLAS_WORKSPACE] = DETERMINISTIC_WORKSPACE
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace


def _deepspeed() -> Any:
    """DeepSpeed, imported when a run uses it. On CPU it would compile its shared-memory allreduce
    kernel (a minute of C++ on a fresh machine) for inference collectives that training never
    calls, so its builder is turned off first."""
    import deepspeed

    if not torch.cuda.is_available():
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    return deepspeed


def init_distributed() -> Dist:
    """Join the process group torchrun set up, or make a one-process group when run directly.

    CPU uses gloo, GPU nccl. Processes that torchrun started join through DeepSpeed, which then
    knows the group; one process makes its group with torch alone, since it steps without the
    DeepSpeed engine unless ZeRO is on (whose initialize adopts the group), and importing
    DeepSpeed took 1.7 s of every such run.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ:
            _deepspeed().init_distributed(dist_backend=backend)
        else:
            os.environ.update(
                RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
            )
            dist.init_process_group(backend=backend, rank=0, world_size=1)
    # torchrun always sets LOCAL_RANK; a one-process group made earlier in this process may
    # have outlived its environment, and DeepSpeed reads LOCAL_RANK whenever it builds an engine.
    local_rank = int(os.environ.setdefault("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The file's cluster tuning plus the batch, accumulation and clipping the TrainConfig owns."""
    if world_size != cfg.nproc_per_node:
        raise ValueError(
            f"{world_size} processes run a config for nproc_per_node={cfg.nproc_per_node}: "
            "launch with tasks.train.launch, which starts as many as the config says"
        )
    path = Path(cfg.deepspeed_config) if cfg.deepspeed_config else DEEPSPEED_DIR / f"zero{cfg.zero_stage}.json"
    if not path.exists():
        raise ValueError(f"DeepSpeed config {path} not found: set train.deepspeed_config to a JSON file")
    tuning = json.loads(path.read_text())
    if clash := OWNED_KEYS & tuning.keys():
        raise ValueError(f"{path} sets {sorted(clash)}, which come from the train config: remove them from the file")
    zero = tuning.get("zero_optimization", {})
    if zero.get("stage", cfg.zero_stage) != cfg.zero_stage:
        raise ValueError(f"{path} is for ZeRO stage {zero['stage']} but train.zero_stage={cfg.zero_stage}")
    return {
        **tuning,
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accumulation,
        # Stage 0 clips in TrainEngine.step: DeepSpeed computes that norm but does not report it.
        "gradient_clipping": cfg.grad_clip if cfg.zero_stage else 0.0,
        "zero_optimization": {**zero, "stage": cfg.zero_stage},
    }


def attention_kernel(choice: str, device: torch.device, dense_kernel: str, precision: str) -> str:
    """transformers' attention implementation for ``train.attention`` on ``device`` at ``precision``.

    ``auto`` is FlexAttention on a GPU. On CPU, where torch has no FlexAttention backward, it is
    varlen in bf16, which trained 1.3x as fast as the dense mask at bench/train.py's shapes and
    1.1-1.2x at the tiny profile's top rung, and the dense mask in fp32, where varlen's batched
    matmuls trained the tiny profile's top rung at 0.92x (sdpa has a fused fp32 kernel).
    """
    if choice == "auto":
        choice = "flex" if device.type == "cuda" else "varlen" if precision == "bf16" else "dense"
    if choice == "flex" and device.type != "cuda":
        raise ValueError(
            "train.attention=flex trains on a GPU only: torch has no FlexAttention backward on CPU. "
            "Use train.attention=dense or auto on this machine"
        )
    if choice == "varlen":
        return varlen_kernel()
    return "flex_attention" if choice == "flex" else dense_kernel


class TrainEngine:
    """A model with AdamW: ``loss``, ``backward`` and ``step`` per micro-batch.

    DeepSpeed wraps the model only where it does something: several processes or a ZeRO stage.
    One process at ZeRO 0 steps plain PyTorch, the same arithmetic without the engine's
    per-step bookkeeping (gradient flattening and copies, micro-step hooks).
    """

    def __init__(self, model: PreTrainedModel, cfg: TrainConfig, dist: Dist) -> None:
        self.cfg = cfg
        self.dist = dist
        # transformers reads the kernel per forward; save_pretrained does not write it.
        model.set_attn_implementation(
            attention_kernel(cfg.attention, dist.device, model.config._attn_implementation, cfg.precision)
        )
        model.to(dist.device)
        # Norm gains are 1-D; decaying them toward 0 would fight the normalisation.
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = cfg.optimizer
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=True,
        )
        self.deepspeed: Any = None
        if dist.world_size > 1 or cfg.zero_stage:
            self.deepspeed, *_ = _deepspeed().initialize(
                model=model, optimizer=optimizer, config=deepspeed_config(cfg, dist.world_size)
            )
            self.optimizer = self.deepspeed.optimizer
        else:
            deepspeed_config(cfg, dist.world_size)  # the same checks of the config and its file
            self.optimizer = optimizer
        self.module: PreTrainedModel = model
        self.micro_steps = 0
        self.forward = torch.compile(self.deepspeed or model) if cfg.compile else self.deepspeed or model
        self._compile_pending = cfg.compile  # the first call compiles; train.compile falls back if that fails
        self.autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    def loss(self, batch: Batch, z_loss: float, rows: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward one micro-batch; the loss is fp32 whatever the autocast dtype (``rows``: see ``causal_lm_loss``)."""
        inputs = batch.model_inputs(self.module.config._attn_implementation, torch.float32, self.dist.device)
        with self.autocast:
            logits = self._forward(inputs).logits  # (B, T, V)
        return causal_lm_loss(logits, batch.labels.to(self.dist.device, non_blocking=True), z_loss, rows)

    def _forward(self, inputs: dict[str, Any]) -> Any:
        if not self._compile_pending:
            return self.forward(**inputs, use_cache=False)
        self._compile_pending = False
        try:
            return self.forward(**inputs, use_cache=False)
        except Exception as error:  # noqa: BLE001 -- whatever the compiler raises, train.compile promises a fallback
            log.warning("torch.compile failed (%s: %s); training uncompiled", type(error).__name__, error)
            self.forward = self.deepspeed or self.module
            return self.forward(**inputs, use_cache=False)

    def backward(self, loss: torch.Tensor) -> None:
        if self.deepspeed is not None:
            self.deepspeed.backward(loss)  # it divides by the accumulation steps itself
        else:
            (loss / self.cfg.grad_accumulation).backward()

    def step(self) -> torch.Tensor | None:
        """Call after every micro-batch's backward. After the last one of an optimizer step it
        applies the update and returns the pre-clip global grad norm; else None."""
        self.micro_steps += 1
        boundary = self.micro_steps % self.cfg.grad_accumulation == 0
        if self.deepspeed is not None:
            assert boundary == self.deepspeed.is_gradient_accumulation_boundary(), "micro-step counts disagree"
        if not boundary:
            if self.deepspeed is not None:
                self.deepspeed.step()  # DeepSpeed counts micro-steps itself
            return None
        if self.cfg.zero_stage == 0:
            norm = torch.nn.utils.clip_grad_norm_(
                self.module.parameters(), self.cfg.grad_clip or float("inf"), foreach=True
            )
            if self.deepspeed is not None:
                self.deepspeed.step()
            else:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            return norm
        self.deepspeed.step()
        # ZeRO reports inf when the norm was not finite (it then skips the update itself).
        return torch.as_tensor(self.deepspeed.get_global_grad_norm(), dtype=torch.float32)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer if self.cfg.zero_stage else self.optimizer

    def optimizer_state(self) -> dict[str, Any]:
        """This rank's AdamW state (its partition under ZeRO): tensors and numbers only."""
        base = self._base_optimizer()
        if self.cfg.zero_stage != 3:
            return base.state_dict()
        # ZeRO-3 attaches its fp32 partitions to the param groups only around a step.
        self.optimizer._set_fp32_optimizer_param_groups()
        try:
            return base.state_dict()
        finally:
            self.optimizer._clear_fp32_optimizer_param_groups()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        base = self._base_optimizer()
        if self.cfg.zero_stage != 3:
            base.load_state_dict(state)
            return
        self.optimizer._set_fp32_optimizer_param_groups()
        try:
            base.load_state_dict(state)
        finally:
            self.optimizer._clear_fp32_optimizer_param_groups()

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on CPU on rank 0 (every rank must call: ZeRO-3 gathers)."""
        if self.cfg.zero_stage == 3:
            weights = dict(self.deepspeed._zero3_consolidated_16bit_state_dict() or {})
            # It keeps tied weights shared; safetensors wants each tensor stored once.
            return {name: t.clone() if name in tied_names(weights) else t for name, t in weights.items()}
        if not self.dist.is_main:
            return {}
        return {name: t.detach().to("cpu", copy=True) for name, t in self.module.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Overwrite the weights in place on every rank and refresh ZeRO's fp32 partitions."""
        module = self.module
        if self.cfg.zero_stage == 3:
            with _deepspeed().zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
                if self.dist.is_main:
                    module.load_state_dict(weights)
        else:
            module.load_state_dict(weights)
        if self.cfg.zero_stage:
            self.optimizer.refresh_fp32_params()


def tied_names(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """``alias -> first name`` for tensors that share storage (tied embeddings)."""
    first: dict[tuple[int, int], str] = {}
    aliases = {}
    for name, tensor in weights.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases

"""The alignment stage's config section. Defaults are the ``tiny`` profile: minutes on 2 CPU cores.

Four parts, each versioning what it determines: ``instructions`` (which (prompt, response)
items exist), ``sft`` and ``dpo`` (how a model is trained on them), ``sampling`` (how the
preference pairs are drawn from the model's own outputs) and ``evaluation`` (how base, SFT
and DPO models are scored on the held-out instruction tasks). The alignment-tax bound is
the release gate's (``evals.gate.alignment_tax``), not a second policy here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ladder.config import Section

TaskName = Literal["continue", "missing_line", "next_passage", "work", "author"]
ALL_TASKS: list[TaskName] = ["continue", "missing_line", "next_passage", "work", "author"]


class InstructionConfig(Section):
    """Templated (FLAN-style) instruction items from the curated splits, plus user-supplied ones."""

    tasks: list[TaskName] = Field(
        list(ALL_TASKS),
        min_length=1,
        description="Task families to build: continue (next line), missing_line (fill the line marked ___), "
        "next_passage (which option comes next, answered by letter), work (which title, by letter; needs meta.title), "
        "author (which source wrote it; needs two or more sources).",
    )
    items_per_task: int = Field(256, ge=1, description="Training items kept per task family (fewer if the train split runs out).")
    heldout_items_per_task: int = Field(
        64, ge=1, description="Held-out evaluation items per task family, built the same way from the validation split."
    )
    items_per_document: int = Field(2, ge=1, description="Candidate items drawn from one document per task, so items spread over passages.")
    context_lines: int = Field(3, ge=1, description="Lines of passage a prompt shows (before the line asked for, or as the passage to attribute).")
    num_choices: int = Field(4, ge=2, description="Options of a multiple-choice item (next_passage, work): the true one and distractors.")
    min_line_words: int = Field(3, ge=1, description="A line asked for (or offered as an option) has at least this many words.")
    replay_passages: int = Field(
        512,
        ge=0,
        description="Passages of the train split, as plain text in pretraining format, that SFT mixes into its rows with "
        "loss on every token: replaying pretraining data keeps fine-tuning from unlearning the corpus (the alignment "
        "tax on perplexity; InstructGPT's pretraining mix). 0 replays none.",
    )
    replay_lines: int = Field(8, ge=1, description="Lines per replay passage (SFT cuts it to align.sft.max_length tokens).")
    user_files: list[str] = Field(
        [],
        description="JSONL files of user-supplied training items, one per line: {prompt, response} or chat "
        "{messages: [{role, content}, ...]} ending with the assistant's turn (the response). Task name: 'user'.",
    )
    seed: int = Field(0, description="Seed of position, template, distractor and option-order choices.")


class LoraSettings(Section):
    """LoRA adapters through PEFT; merged into the weights when training ends (the output stays a plain HF model)."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of every weight (full fine-tuning).")
    r: int = Field(8, ge=1, description="Rank of the adapters.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters (Llama/Qwen3 naming).",
    )


class TrainerSettings(Section):
    """What SFT and DPO share: optimisation, precision, devices, adapters."""

    lr: float = Field(1e-3, gt=0, description="Peak learning rate (linear warmup, then linear decay to 0).")
    epochs: float = Field(2.0, gt=0, description="Passes over the training rows.")
    batch_size: int = Field(8, ge=1, description="Rows (SFT) or pairs (DPO) per device per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    bf16: bool = Field(
        False, description="bf16 mixed precision. TRL turns it on by default, which fails on CPU-only machines (trl#3616)."
    )
    use_cpu: bool = Field(True, description="Train on the CPU even when a GPU is present; false lets the Trainer use the GPUs.")
    deepspeed: str | None = Field(
        None,
        description="DeepSpeed config for GPU runs: a path (relative to the repository, e.g. infra/deepspeed/zero2.json). "
        "Batch size, accumulation and clipping come from this section ('auto' in the file).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA through PEFT, or full fine-tuning.")
    seed: int = Field(0, description="Seed of initialisation (adapters), data order and dropout.")


class SFTSettings(TrainerSettings):
    """Supervised fine-tuning with TRL's SFTTrainer: loss on the response tokens only (and on replay passages)."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training rows.")
    max_length: int = Field(256, ge=8, description="Tokens per training row; a longer item is dropped (counted), never cut.")
    packing: bool = Field(
        True,
        description="Pack several items per row, each attending only to itself (a block-diagonal 4D mask and "
        "restarted positions); false gives one padded item per row.",
    )


class DPOSettings(TrainerSettings):
    """Direct preference optimisation with TRL's DPOTrainer on pairs of the model's own samples."""

    lr: float = Field(5e-5, gt=0, description="Peak learning rate (linear warmup, then linear decay to 0).")
    epochs: float = Field(3.0, gt=0, description="Passes over the preference pairs.")
    beta: float = Field(0.1, gt=0, description="DPO's beta: the strength of the pull towards the reference model.")
    loss_type: list[str] = Field(
        ["sigmoid", "sft"],
        min_length=1,
        description="TRL's DPO loss terms: sigmoid is DPO's; sft adds the chosen response's NLL (RPO), which keeps "
        "DPO from lowering the likelihood of the answers it prefers (on the tiny corpus, DPO alone cut the "
        "held-out task score while its reward margin rose).",
    )
    loss_weights: list[float] | None = Field(None, description="Weight of each loss term (null: 1 each).")
    max_length: int = Field(256, ge=8, description="Longest prompt + response in tokens (TRL truncates beyond it).")


class SamplingConfig(Section):
    """How preference pairs come from the policy's own samples."""

    prompts: int = Field(256, ge=1, description="Training prompts sampled per DPO iteration (those with a reward function).")
    samples_per_prompt: int = Field(8, ge=2, description="k responses sampled per prompt; the best and the worst make a pair.")
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature (no top-k or top-p truncation); at 1.0 a small model's samples are mostly off-format noise."
    )
    max_new_tokens: int = Field(32, ge=1, description="Longest sampled response in tokens (it usually stops at eos first).")
    min_reward_gap: float = Field(
        0.0, ge=0, lt=1, description="Best and worst rewards this close or closer count as a tie (no pair); 0 skips exact ties only."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    seed: int = Field(0, description="Seed of prompt choice and of sampling.")


class AlignEvalConfig(Section):
    """Greedy answers on the held-out instruction tasks."""

    max_new_tokens: int = Field(32, ge=1, description="Longest greedy answer in tokens.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")


class AlignConfig(Section):
    """The alignment stage: instruction data, SFT, DPO on the model's own samples, alignment tax."""

    instructions: InstructionConfig = Field(default_factory=InstructionConfig, description="Instruction data.")
    sft: SFTSettings = Field(default_factory=SFTSettings, description="Supervised fine-tuning.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Preference pairs from the model's own samples.")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="Preference training.")
    iterations: int = Field(
        1, ge=1, le=4, description="DPO rounds; each samples new pairs from the previous round's model, its reference."
    )
    evaluation: AlignEvalConfig = Field(default_factory=AlignEvalConfig, description="Held-out instruction evaluation.")
    register_candidate: bool = Field(
        True,
        description="Submit the final model to the evals flow: a registry candidate gated against the aligned "
        "champion and, for the alignment tax, against its base model.",
    )
    registered_model: str | None = Field(
        None,
        description="The registered model aligned candidates are released under; None: the evals section's name "
        "with '-chat' appended. A base model and its aligned derivative are separate releases, as published "
        "model families ship them: an aligned candidate answers to its base through the alignment-tax bound, and "
        "to the previous aligned champion through the regression margin. Judged under the base's name, the "
        "aligned model would meet its own base as the champion and be held to the regression margin where "
        "the tax bound is the policy.",
    )

    def release_name(self, base_name: str) -> str:
        """The registered model an aligned candidate of ``base_name``'s models is judged under."""
        return self.registered_model or f"{base_name}-chat"

    @model_validator(mode="after")
    def _lengths(self) -> "AlignConfig":
        if self.sampling.max_new_tokens >= self.dpo.max_length:
            raise ValueError(
                f"sampling.max_new_tokens={self.sampling.max_new_tokens} leaves no room for the prompt in "
                f"dpo.max_length={self.dpo.max_length}: lower the first or raise the second"
            )
        return self

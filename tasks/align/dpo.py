"""Direct preference optimisation with TRL's DPOTrainer, and DPO's implicit reward on held-out pairs.

The policy starts from the model whose samples made the pairs, which is also the frozen
reference (on-policy, as in iterative DPO): round t+1 samples from round t's model and uses
it as its reference. With LoRA, TRL's reference is the policy with its adapters disabled.

The implicit reward of a response y to a prompt x is
``beta * (log pi(y|x) - log pi_ref(y|x))`` (Rafailov et al. 2023); a model that learned the
preferences gives the chosen response of a pair it never trained on the higher one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Code, StageOutput
from ladder.workspace import Workspace
from tasks.align.checkpoints import ModelRef, load_model
from tasks.align.config import DPOSettings
from tasks.align.generate import response_logps
from tasks.align.preferences import Pair, PreferenceSet
from tasks.align.training import lora_config, quiet, train_and_save, trainer_arguments

STAGE = "dpo"
CODE = Code(("tasks.align", "models"), ("trl", "transformers", "torch", "peft"))


def preference_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    """TRL's conversational preference format: the prompt's turns, the chosen and rejected assistant turns."""
    return [
        {
            "prompt": pair.messages,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        }
        for pair in pairs
    ]


def run_dpo(policy_dir: Path, pairs: list[Pair], cfg: DPOSettings, out: Path) -> StageOutput:
    """Train the model in ``policy_dir`` on ``pairs`` against itself as the reference; write ``out/model``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError(
            "no preference pairs: every prompt's samples tied; raise align.sampling.samples_per_prompt, "
            "temperature or prompts"
        )
    model, tokenizer = load_model(policy_dir)
    peft = lora_config(cfg.lora)
    reference = None if peft is not None else load_model(policy_dir)[0]
    args = DPOConfig(
        **trainer_arguments(cfg, out / "trainer"), beta=cfg.beta, max_length=cfg.max_length,
        loss_type=list(cfg.loss_type), loss_weights=list(cfg.loss_weights) if cfg.loss_weights else None,
    )
    trainer = quiet(DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(preference_rows(pairs)),
        processing_class=tokenizer, peft_config=peft,
    ))
    result, seconds, history = train_and_save(trainer, tokenizer, out)
    last = history[-1] if history else {}
    metrics = {
        "train_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "train_seconds": seconds,
        # TRL's running reward statistics on the training pairs at the last step.
        **{f"final_{k.replace('/', '_')}": v for k, v in last.items() if k.startswith("rewards/")},
    }
    return StageOutput(counts={"pairs": len(pairs)}, metrics=metrics)


@task(name="train-dpo", cache_policy=NO_CACHE)
def train_dpo(ws: Workspace, cfg: DPOSettings, policy: ModelRef, preferences: PreferenceSet) -> ModelRef:
    """The DPO model of this policy, its preference pairs and config (trained once, then a cache hit)."""
    store = ws.store()
    inputs = {"policy": policy.version, "preferences": preferences.version}
    artifact, _ = store.run_stage(
        STAGE, cfg, inputs, lambda out: run_dpo(policy.model_dir, preferences.pairs(), cfg, out), code=CODE
    )
    return ModelRef.of_artifact(artifact)


def implicit_reward_margins(policy_dir: Path, reference_dir: Path, pairs: list[Pair], beta: float, batch_size: int) -> list[float]:
    """``r(chosen) - r(rejected)`` per pair, with DPO's implicit reward against ``reference_dir``."""
    prompts = [pair.messages for pair in pairs]
    chosen = [pair.chosen for pair in pairs]
    rejected = [pair.rejected for pair in pairs]
    logps = {}
    for name, model_dir in (("policy", policy_dir), ("reference", reference_dir)):
        model, tokenizer = load_model(model_dir)
        logps[name] = (
            response_logps(model, tokenizer, prompts, chosen, batch_size),
            response_logps(model, tokenizer, prompts, rejected, batch_size),
        )
    chosen_reward = beta * (logps["policy"][0] - logps["reference"][0])
    rejected_reward = beta * (logps["policy"][1] - logps["reference"][1])
    return (chosen_reward - rejected_reward).tolist()


@task(name="reward-margin", cache_policy=NO_CACHE)
def reward_margin(policy: ModelRef, reference: ModelRef, heldout: PreferenceSet, beta: float, batch_size: int) -> dict[str, float]:
    """DPO's reward margin on held-out pairs: its mean, and the share of pairs ranked the right way round."""
    pairs = heldout.pairs()
    if not pairs:
        raise ValueError("no held-out preference pairs (every held-out prompt's samples tied): raise align.sampling.samples_per_prompt")
    margins = implicit_reward_margins(policy.model_dir, reference.model_dir, pairs, beta, batch_size)
    return {
        "margin": sum(margins) / len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "pairs": float(len(margins)),
    }

"""The evaluation stage's config section. Defaults are the ``tiny`` profile: a few hundred items, well under a minute on CPU.

Three parts with separate concerns: ``suite`` decides which items exist (it versions the eval
suite artifact), ``run`` decides how lm-eval scores them (batching, dtype), and ``gate`` is the
release policy a candidate must pass to become the registry's champion.

Metrics are named ``<task>/<metric>`` (``ladder_next_line/acc_norm``); ``ladder_ppl`` is the
held-out perplexity pooled over every source, ``ladder_ppl_<source>`` one source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ladder.config import Section


class SuiteConfig(Section):
    """Which eval items are built from the held-out splits, and how."""

    eval_split: Literal["validation", "test"] = Field("test", description="Held-out split the scored items come from.")
    fewshot_split: Literal["validation", "test"] = Field(
        "validation", description="Held-out split the few-shot examples come from (never the scored split)."
    )
    items_per_task: int | None = Field(
        256, ge=1, description="Scored items per cloze and generation task (fewer if the split runs out; null: every clean "
        "item the split yields). The gate's power check says how many a margin needs: on the example corpus 256 "
        "items detect 0.038-0.044 of cloze accuracy between the tiny base model and its aligned version, and "
        "scoring time grows linearly with them.",
    )
    variant_items: int = Field(
        64, ge=1, description="Items the few-shot variants and the generation task score (the first of the family's "
        "items): a few-shot prompt costs about three times a zero-shot one, and the default policy gates only the "
        "zero-shot cloze tasks and perplexity, whose items are what the gate's power needs.",
    )
    fewshot_pool: int = Field(16, ge=1, description="Candidate few-shot examples per task; lm-eval draws num_fewshot of them per item.")
    ppl_docs_per_source: int | None = Field(
        24, ge=1, description="Held-out documents per source scored for perplexity and bits per byte (null: all). "
        "Paired per-document differences are tight: on the example corpus 24 per source (Milton holds out 15) detect "
        "0.016 bits per byte.",
    )
    num_fewshot: int = Field(
        2, ge=1, description="Examples in the context of the few-shot variant of each cloze and generation task "
        "(with more, the tiny model's 256-token context cuts them from the left)."
    )
    num_choices: int = Field(4, ge=2, description="Options per multiple-choice item: the true one and num_choices - 1 distractors.")
    context_lines: int = Field(3, ge=1, description="Lines of the passage shown before the line a cloze item asks about.")
    min_line_words: int = Field(4, ge=2, description="A line asked about (or offered as a distractor) has at least this many words.")
    items_per_document: int = Field(
        2, ge=1, description="Candidate items drawn from one document, so that items spread over many passages."
    )
    max_prompt_chars: int = Field(
        450, ge=16, description="Longest prompt (few-shot examples, context and the longest option) an item may make, "
        "in characters: it must fit the model's context, or lm-eval cuts it from the left and scores another question. "
        "Tiny: 256 tokens hold 450 characters at 1.76 characters per token, below the 2.4 the tiny tokenizers average on "
        "the example corpus (no prompt was cut there; unbounded, 14 per evaluation were).",
    )
    max_gen_toks: int = Field(6, ge=1, description="Tokens the generation task may produce before it is cut off.")
    ngram: int = Field(
        13, ge=1, le=64, description="Word n-gram length of the contamination check (GPT-3: 13); an item sharing one with train is dropped."
    )
    index_batch_docs: int = Field(
        512, ge=1, description="Train documents hashed per batch while the n-gram index is streamed (bounds memory)."
    )
    seed: int = Field(0, description="Seed of item sampling, distractor choice and option order.")

    @model_validator(mode="after")
    def _distinct_splits(self) -> "SuiteConfig":
        if self.eval_split == self.fewshot_split:
            raise ValueError(
                f"eval_split and fewshot_split are both {self.eval_split!r}: few-shot examples must come from the other held-out split"
            )
        return self


class RunConfig(Section):
    """How lm-eval's HFLM scores the suite."""

    batch_size: int = Field(32, ge=1, description="Requests per forward pass (lm-eval's default is 1).")
    max_length: int | None = Field(
        None, ge=2, description="Context window lm-eval uses; null means the model's max_position_embeddings."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights and activations during evaluation.")
    device: str = Field("cpu", description="Torch device the model runs on (cpu, cuda, cuda:1, ...).")
    bootstrap_iters: int = Field(
        1000, ge=1, description="Bootstrap draws for the stderr of metrics without a closed form (lm-eval's default is 100000)."
    )


class GatePolicy(Section):
    """The release policy: what a candidate must reach to become champion.

    A metric's direction (higher or lower is better) is lm-eval's, read from the results.
    """

    floors: dict[str, float] = Field(
        {"ladder_ppl/bits_per_byte": 3.0, "ladder_next_line/acc_norm": 0.15},
        description="Metric -> worst acceptable value: a minimum for higher-is-better metrics, a maximum for "
        "lower-is-better ones (bits per byte, perplexity). Applies to every candidate, with or without a champion. "
        "Tiny defaults: an untrained model scores log2(vocab) / bytes per token, about 3.3 bits per byte with the "
        "tiny tokenizers; chance on the 4-way cloze is 0.25.",
    )
    regression_margins: dict[str, float] = Field(
        {"ladder_ppl/bits_per_byte": 0.02, "ladder_next_line/acc_norm": 0.05, "ladder_last_word/acc_norm": 0.05},
        description="Metric -> how much worse than the champion a candidate may be, in the metric's units. Candidate and "
        "champion are compared item by item (paired bootstrap); the candidate passes only if the worse end of the "
        "interval of its difference stays within the margin, so a drop the suite cannot rule out is not let through. "
        "Tiny defaults: margins the tiny suite can see (the power check reports each one's detectable effect); "
        "0.02 of cloze accuracy would take 900-1200 items per task, more than the example corpus holds out.",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="Coverage of the paired difference's interval; its worse end is what the margin bounds."
    )
    power: float = Field(
        0.8, gt=0.5, lt=1, description="Chance that a candidate no worse than the champion passes: with the confidence it "
        "sets each metric's minimum detectable effect, (z_(1+confidence)/2 + z_power) x stderr of the paired difference.",
    )
    underpowered: Literal["fail", "report"] = Field(
        "report", description="What a gated metric whose minimum detectable effect exceeds its margin does to the power "
        "check (the message says how many items the margin needs). fail: the suite cannot see its margin, so nothing "
        "passes on it; report: only said, since a regression cannot pass an underpowered suite anyway (its wide "
        "interval reaches past the margin), so what low power costs is good candidates rejected as unresolved.",
    )
    bootstrap_iters: int = Field(
        2000, ge=100, description="Paired bootstrap draws per gated metric: 2000 put the interval's ends within a few "
        "percent of their limit in milliseconds (Efron & Tibshirani 1993, ch. 13).",
    )
    alignment_tax: dict[str, float] = Field(
        {"ladder_ppl/bits_per_byte": 0.15, "ladder_next_line/acc_norm": 0.05},
        description="Metric -> how much worse an aligned model may be than its base model (applies when base metrics are given).",
    )
    scaling_gate: Literal["required", "advisory"] = Field(
        "required",
        description="required: a failed scaling-law prediction gate rejects the candidate; advisory: it is only reported.",
    )

    @field_validator("regression_margins", "alignment_tax")
    @classmethod
    def _non_negative(cls, values: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise ValueError(f"margins and bounds are amounts of worsening and must be >= 0, got {negative}")
        return values

    def metrics(self) -> set[str]:
        """Every metric the policy names."""
        return set(self.floors) | set(self.regression_margins) | set(self.alignment_tax)


class EvalConfig(Section):
    """The evaluation stage: held-out eval suite, lm-eval run, release gate, registry."""

    suite: SuiteConfig = Field(default_factory=SuiteConfig, description="Eval items built from the held-out splits.")
    run: RunConfig = Field(default_factory=RunConfig, description="How lm-eval scores the suite.")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="The release policy for promotion to champion.")
    registered_model: str = Field(
        "ladder-tiny", min_length=1, description="The one MLflow registered model whose versions are the candidates."
    )

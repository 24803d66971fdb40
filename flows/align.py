"""The align flow: instruction data -> SFT -> DPO on the model's own samples -> gains and alignment tax -> registry."""

from __future__ import annotations

from prefect import flow

from app.project import ProjectConfig
from flows.evals import evals_flow
from ladder import progress
from ladder.artifacts import ArtifactRef
from ladder.config import load
from ladder.tags import ALIGN_ITERATION, ALIGN_REFERENCE
from ladder.workspace import Workspace
from tasks.align.checkpoints import resolve_base
from tasks.align.dpo import reward_margin, train_dpo
from tasks.align.instructions import build_instructions
from tasks.align.preferences import sample_preferences
from tasks.align.report import AlignResult, evaluate_model, summarize
from tasks.align.runs import lineage_tags, log_report, log_training_run, open_align_run
from tasks.align.sft import train_sft
from tasks.evals.gate import ScalingGate, check_policy
from tasks.evals.suite import build_suite
from tasks.data.dataset import resolve_dataset
from tasks.train.stage import TrainedModel


@flow(name="align")
def align_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    base_model: TrainedModel | None = None,
    base_model_dir: str | None = None,
    dataset_md5: str | None = None,
    lineage: dict[str, ArtifactRef] | None = None,
    scaling_gate: ScalingGate | None = None,
) -> AlignResult:
    """Align a base model: SFT on instruction data, then DPO on pairs of its own samples; measure gains and tax.

    The base is ``base_model`` (what the train flow returned), else the checkpoint in ``base_model_dir``,
    else the registry's champion, else the latest pretrained model;
    ``dataset_md5`` to the version in ``data.dvc``; ``lineage`` and ``scaling_gate`` are passed on to the
    evaluation of the aligned model (the ladder behind its base model, and the base's scaling gate).
    Returns an :class:`~tasks.align.report.AlignResult`: the models, the table (one row per model:
    held-out instruction scores and eval-suite metrics), the DPO reward margin on held-out pairs,
    the alignment tax of each aligned model against the base and whether the final model is
    within the gate's bounds, the MLflow run ids, and (with ``align.register_candidate``) the
    evals flow's verdict on the final model.
    """
    progress.start("align")
    project = load(ProjectConfig, profile, overrides or [])
    cfg, evals = project.align, project.evals
    ws = Workspace.from_env()
    dataset = resolve_dataset(ws, dataset_md5)
    md5 = dataset.md5
    suite = build_suite(ws, evals.suite, dataset)
    check_policy(evals.gate, suite.metrics)
    base = resolve_base(ws, evals.registered_model, base_model, base_model_dir)
    instructions = build_instructions(
        ws, cfg.instructions, dataset, [evals.suite.eval_split, evals.suite.fewshot_split], evals.suite.ngram
    )
    tags = lineage_tags(base, instructions, md5)
    align_run = open_align_run(ws, cfg, base, instructions, md5)
    sft = train_sft(ws, cfg.sft, base, instructions)
    sft_run = log_training_run(ws, "sft", cfg.sft, sft, align_run, tags, instructions=instructions)
    policy, dpo_runs = sft, []
    for iteration in range(1, cfg.iterations + 1):
        pairs = sample_preferences(ws, cfg.sampling, policy, instructions, "train", iteration)
        round_tags = {**tags, ALIGN_ITERATION: str(iteration), ALIGN_REFERENCE: policy.version}
        policy = train_dpo(ws, cfg.dpo, policy, pairs)
        dpo_runs.append(log_training_run(ws, "dpo", cfg.dpo, policy, align_run, round_tags, preferences=pairs))
    heldout_pairs = sample_preferences(ws, cfg.sampling, sft, instructions, "heldout")
    margin = reward_margin(policy, sft, heldout_pairs, cfg.dpo.beta, cfg.evaluation.batch_size)
    heldout = instructions.items("heldout")
    scores = [
        evaluate_model(name, model, heldout, cfg.evaluation, suite, evals.run)
        for name, model in (("base", base), ("sft", sft), ("dpo", policy))
    ]
    facts = {
        "base model": base.registry_version or str(base.model_dir),
        "instructions": f"{instructions.version} ({len(instructions.items('train'))} train, {len(heldout)} held-out items)",
        "dataset": md5,
        "eval suite": suite.version,
    }
    summary = summarize(scores, margin, evals.gate, facts)
    log_report(align_run, summary.rows, margin, summary.passed, summary.markdown, {s.name: s.answers for s in scores})
    registration = None
    if cfg.register_candidate:
        release = f"evals.registered_model={cfg.release_name(evals.registered_model)}"
        registration = evals_flow(
            profile=profile, overrides=[*(overrides or []), release], model_dir=str(policy.model_dir),
            training_run_id=dpo_runs[-1],
            dataset_md5=md5, lineage=lineage, scaling_gate=scaling_gate,
            base=scores[0].evals,
        )
    result = AlignResult(
        base_model_dir=str(base.model_dir),
        sft_model_dir=str(sft.model_dir),
        dpo_model_dir=str(policy.model_dir),
        table=summary.rows,
        reward_margin=margin["margin"],
        reward_margin_accuracy=margin["accuracy"],
        tax=summary.tax,
        tax_checks={model: [c.line() for c in checks] for model, checks in summary.checks.items()},
        passed_tax_bound=summary.passed,
        mlflow_run_ids={"align": align_run, "sft": sft_run, "dpo": dpo_runs},
        instructions=instructions.artifact.metrics,
        registry=registration,
    )
    progress.finish("align", {"reward_margin": round(margin["margin"], 4), "passed_tax_bound": summary.passed})
    return result

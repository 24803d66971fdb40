"""Every MLflow tag ladder writes, in one place: the names runs and model versions are searched by.

A tag's name is an interface (the UI filters by it, ``search_runs`` and
``search_model_versions`` query it, later stages read it back), so no module spells one out
itself. Each dataset version is tagged under one key, ``DATASET``, whether a run made it or
read it.
"""

from __future__ import annotations

# Every stage run.
STAGE = "ladder.stage"
GIT_COMMIT = "ladder.git_commit"
PREFECT_FLOW_RUN = "ladder.prefect_flow_run_id"
ARTIFACT_VERSION = "ladder.artifact_version"  # the run's own artifact
ARTIFACT_PATH = "ladder.artifact_path"
PRODUCED = "ladder.artifacts"  # every artifact the run produced, "stage:version,...": how lineage finds it
INPUT_PREFIX = "ladder.input."  # ladder.input.<name> = the version of that input
DATASET = "ladder.data.md5"  # the DVC md5 of the dataset the run made or read

# Stage runs' own facts.
DATA_CACHED = "ladder.data.cached"
TOKENIZER = "ladder.tokenizer"
LOADER_SEED = "ladder.loader_seed"
PEAK_TFLOPS = "ladder.peak_tflops_per_process"
SPIKE_PREFIX = "ladder.spike."  # ladder.spike.<attempt>.<field>: one rollback's evidence
SCALING_GATE = "ladder.gate.scaling"
SCALING_GATE_REASONS = "ladder.gate.scaling.reasons"
SCALING_OVERRIDE = "ladder.gate.scaling.override_reason"
INSTRUCTIONS = "ladder.instructions.version"
BASE_MODEL_PREFIX = "ladder.base_model."  # dir, version, registry_version, training_run of an aligned model's base
ALIGN_ITERATION = "ladder.align.iteration"
ALIGN_REFERENCE = "ladder.align.reference_version"
ALIGN_PASSED_TAX = "ladder.align.passed_tax_bound"
MODEL_DIR = "ladder.model_dir"
TRAINING_RUN = "ladder.training_run"

# Registered model versions: what was judged, how, and by whom it was promoted.
EVAL_RUN = "ladder.eval_run"
SUITE_TAG = "ladder.eval_suite"
DECISION_TAG = "ladder.gate.decision"
REASONS_TAG = "ladder.gate.reasons"
REPORT_TAG = "ladder.gate.report"
INPUTS_TAG = "ladder.gate.inputs"
COMPARED_TAG = "ladder.gate.compared_with"
KEY_TAG = "ladder.gate.key"
SUPERSEDED_TAG = "ladder.superseded_by"
PROMOTION_TAG = "ladder.promotion"
LINEAGE_PREFIX = "ladder.lineage."  # searchable links of a version's lineage.json

# The promotion lock (a registered model of its own).
LOCK_HOLDER_TAG = "ladder.lock.holder"
LOCK_TOKEN_TAG = "ladder.lock.token"
LOCK_EXPIRES_TAG = "ladder.lock.expires"


def input_tags(versions: dict[str, str]) -> dict[str, str]:
    """The tags naming a run's inputs by version; the dataset under ``DATASET``, like everywhere else."""
    return {DATASET if name == "dataset" else f"{INPUT_PREFIX}{name}": str(version) for name, version in versions.items()}

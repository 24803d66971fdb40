"""Evaluation stage: held-out eval suite for lm-eval-harness, release gate, MLflow registry with lineage."""

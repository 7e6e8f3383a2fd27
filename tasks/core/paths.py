"""The fixed layout on disk: paths relative to the repository root, where DVC runs."""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")

EXTERNAL_DIR = Path("data/external")  # source data, a dep of collect: sources live here
FEEDBACK_FILE = EXTERNAL_DIR / "feedback.npz"  # served images people labelled (collect.feedback)
RAW_DIR = Path("data/raw")  # the canonical dataset (collect)
VALIDATED_DIR = Path("data/validated")  # data/raw after it passed the gate (validate)
PROCESSED_DIR = Path("data/processed")  # the split and its statistics (preprocess)
QUARANTINE_DIR = Path("data/quarantine")  # batches that failed a gate, kept for inspection
SERVING_DIR = Path("data/serving")
PREDICTION_LOG = SERVING_DIR / "predictions.sqlite"  # what the serving app logs (monitoring)

ARTIFACTS_DIR = Path("artifacts")
MODEL_FILE = ARTIFACTS_DIR / "model.pt"
CHECKPOINT_DIR = ARTIFACTS_DIR / "checkpoints"
REPORTS_DIR = Path("reports")
GX_DIR = Path("gx")  # the Great Expectations project: suites, checkpoints (reviewed like code)

"""The DVC stages, exactly those of dvc.yaml: `python -m tasks.stages.<name>` is each stage's cmd.

Each module holds `run_<stage>` (the pure function), `<stage>_task` (a thin Prefect task over
it, without retries: the training pipeline runs stages through `dvc repro`, so that DVC decides
what is stale, and bad input is not fixed by retrying) and `main` (the DVC entry point).

`DATA_STAGES` names them in the order the training pipeline runs them.

Import `tasks.training`, `tasks.validation`, `tasks.monitoring`, `tasks.core`.
"""

# validate gates data/raw; preprocess gates the split; select chooses the model (a search when
# train.model is auto). Light on purpose: `mlcycle run --help` lists them without importing a
# stage (Prefect, MLflow, torch take seconds).
DATA_STAGES = ("collect", "validate", "preprocess", "select", "train", "evaluate")

"""The DVC stages, exactly those of dvc.yaml: `python -m tasks.stages.<name>` is each stage's cmd.

Each module holds `run_<stage>` (the pure function: it reads files, writes files and returns a
typed result, and never sees MLflow), `record_<stage>` where the stage has something to log
(from the files it wrote), and `main` (the DVC entry point), which opens the run to record into
with `tasks.core.stage_run.stage_run`. The training pipeline runs stages through `dvc repro`,
so that DVC decides what is stale.

`DATA_STAGES` names them in the order the training pipeline runs them.

Import `tasks.training`, `tasks.validation`, `tasks.monitoring`, `tasks.core`.
"""

# validate gates data/raw; preprocess gates the split; select chooses the model (a search when
# train.model is auto). Light on purpose: `mlcycle run --help` lists them without importing a
# stage (Prefect, MLflow, torch take seconds).
DATA_STAGES = ("collect", "validate", "preprocess", "select", "train", "evaluate")

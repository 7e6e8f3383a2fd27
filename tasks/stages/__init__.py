"""The DVC stages, exactly those of dvc.yaml: `python -m tasks.stages.<name>` is each stage's cmd.

Each module holds `run_<stage>` (the pure function), `<stage>_task` (a thin Prefect task over
it, without retries: the training pipeline runs stages through `dvc repro`, so that DVC decides
what is stale, and bad input is not fixed by retrying) and `main` (the DVC entry point).

Import `tasks.training`, `tasks.validation`, `tasks.monitoring`, `tasks.core`.
"""

"""The DVC stages, exactly those of dvc.yaml: `python -m tasks.stages.<name>` is each stage's cmd.

Import `tasks.training`, `tasks.validation`, `tasks.core`.
"""

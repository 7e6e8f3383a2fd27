"""The MLflow Model Registry step: candidate, versions, load-back check, promotion gate, lock,
manual moves, restore, Prefect tasks.

Imports `tasks.stages` and below.
"""

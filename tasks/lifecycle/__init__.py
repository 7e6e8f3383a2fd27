"""Pipeline bookkeeping and side effects around the stages: running stages through DVC, the MLflow
run, deploy.

Imports `tasks.stages` and below.
"""

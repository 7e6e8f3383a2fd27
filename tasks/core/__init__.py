"""The shared floor: params, paths, errors, console output, atomic files and on-disk formats, pixel
operations, DVC, MLflow tracking, lineage tags, the model file.

Imports only `models`.
"""

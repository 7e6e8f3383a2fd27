"""The shared floor: params, paths, errors, console output, atomic files and on-disk formats, pixel
operations, DVC, MLflow tracking, lineage tags, the model file, and the prediction log (serving
writes it, monitoring and training read it).

Imports only `models`.
"""

"""The training engine the train and select stages call: device and precision, the loop (with
data placement and augmentation), data-parallel processes (DDP), checkpoints, the model
choice and the Optuna search.

Imports only `tasks.core` (and `models`).
"""

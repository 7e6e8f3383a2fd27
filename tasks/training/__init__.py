"""The training engine the train stage calls: device, loop, checkpoints.

Imports only `tasks.core`.
"""

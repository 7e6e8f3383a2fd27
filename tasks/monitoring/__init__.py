"""Drift monitoring's statistics: per-image features, the reference a model version was trained
on (written by the evaluate stage), the Evidently comparison of live traffic with it.

Imports only `tasks.core`.
"""

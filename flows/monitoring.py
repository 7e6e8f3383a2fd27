"""The monitoring flow: the served version's training data against live traffic (placeholder
until the monitoring tasks land)."""

from __future__ import annotations

from prefect import flow


@flow(name="monitoring", description="Drift monitoring of the served model.")
def monitoring(window: int | None = None, batch: str | None = None) -> str:
    return "not enough data"

"""Prefect flows and the ``mlcycle`` CLI: wiring over ``tasks/``, no ML logic."""

import tasks  # noqa: F401  (sets the telemetry switches before Prefect and MLflow import)

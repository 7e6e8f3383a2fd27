"""Prefect flows and the ``mlcycle`` CLI: wiring over ``tasks/``, no ML logic."""

import logging

import tasks  # noqa: F401  (sets the telemetry switches before Prefect and MLflow import)

# Our own progress lines (tasks log them through `mlcycle.*`) reach the flow log at INFO.
logging.getLogger("mlcycle").setLevel(logging.INFO)

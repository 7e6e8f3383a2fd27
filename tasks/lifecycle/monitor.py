"""Monitoring, end to end: find the served version and its reference, read the window, judge
it, record the verdict. Each step has its own module: ``monitor_served`` (what is served and
its reference), ``monitor_window`` (the prediction log's window or a batch),
``monitor_publish`` (report, MLflow run, Prefect artifact) and ``verdict_event`` (the event the
training deployment's drift trigger retrains on).

The statistics live in ``tasks.monitoring``; this room only gathers their inputs and publishes
their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task

from tasks.core.config import Params
from tasks.core.console import run_logger
from tasks.core.paths import PREDICTION_LOG
from tasks.core.prediction_log.readers import UNLABELLED
from tasks.core.tracking import connect
from tasks.lifecycle.monitor_publish import publish
from tasks.lifecycle.monitor_served import Served, served_reference, served_version
from tasks.lifecycle.monitor_window import Window, batch_window, checked_log_path, logged_window
from tasks.monitoring.drift import compare
from tasks.monitoring.reference import Reference
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, DriftResult

EXIT_CODES = {NO_DRIFT: 0, DRIFT: 3, NOT_ENOUGH_DATA: 4}


@dataclass(frozen=True)
class MonitorOutcome:
    served: Served
    result: DriftResult
    report: Path
    run_id: str
    source: str
    logged: tuple[float, float] | None = None  # when the compared rows were logged, if they were

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result.decision]


def check_window(params: Params, window: Window, reference: Reference) -> DriftResult:
    """``compare`` on the window; a window without any feedback label is judged unlabelled."""
    labels = window.labels if (window.labels != UNLABELLED).any() else None
    return compare(reference, window.images, window.probabilities, params.monitor, labels)


def monitor(
    params: Params,
    window: int | None = None,
    batch: Path | None = None,
    log_path: Path | None = None,
) -> MonitorOutcome:
    """Compare the served version's reference with the newest ``window`` rows (default
    ``monitor.window``) of the prediction log at ``log_path`` (default
    data/serving/predictions.sqlite), or with ``batch`` (an ``.npz``); publish the verdict."""
    checked_log_path(log_path)
    connect()  # as every command does: the configured store, created by one process at a time
    served = served_version(params)
    reference = served_reference(served)
    if batch is not None:
        current = batch_window(served, reference, batch)
    else:
        rows = window or params.monitor.window
        current = logged_window(params, served, reference, log_path or PREDICTION_LOG, rows)
    result = check_window(params, current, reference)
    report, run_id = publish(params, served, reference, current, result)
    drifted = ", ".join(check.name for check in result.drifted)
    run_logger("mlcycle.monitor").info(
        "monitor: %s v%s: %s (%d rows%s); report %s",
        served.name,
        served.version,
        result.decision,
        result.rows,
        f", drifted: {drifted}" if drifted else "",
        report,
    )
    return MonitorOutcome(served, result, report, run_id, current.source, current.logged)


monitor_task = task(name="monitor", retries=0)(monitor)

"""The monitoring flow: the served version's training data against live traffic; the verdict
goes out as a Prefect event, and the training deployment's drift trigger retrains.

Wiring only; the work is in ``tasks.lifecycle.monitor`` (publishing) and ``tasks.monitoring``
(statistics). Run it with ``mlcycle monitor`` or from the ``monitoring/hourly`` deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from tasks.core.config import Params, load_params
from tasks.core.console import flow_without_secrets
from tasks.core.errors import hide_user_error_tracebacks
from tasks.lifecycle.monitor import MonitorOutcome, monitor_task
from tasks.lifecycle.verdict_event import emit_verdict_task

hide_user_error_tracebacks()


@dataclass(frozen=True)
class MonitoringOutcome:
    monitored: MonitorOutcome
    retraining: str


@flow_without_secrets(
    name="monitoring",
    description="Compare the served model's training data with its newest logged predictions "
    "(monitor.* in params.yaml); send the verdict as an event (mlcycle.monitor.drift retrains).",
)
def monitoring(
    window: Annotated[int, Field(ge=1)] | None = None,
    batch: str | None = None,
    params: Params | None = None,
    prediction_log: str | None = None,
) -> MonitoringOutcome:
    """``window``: newest logged predictions compared (default monitor.window); ``batch``: an
    .npz of images (and labels) to compare instead of the log; ``params``: params.yaml's;
    ``prediction_log``: the log `mlcycle serve --prediction-log` wrote (default
    data/serving/predictions.sqlite)."""
    params = params or load_params()
    monitored = monitor_task(
        params,
        window,
        Path(batch) if batch else None,
        Path(prediction_log) if prediction_log else None,
    )
    retraining = emit_verdict_task(params, monitored)
    return MonitoringOutcome(monitored, retraining)

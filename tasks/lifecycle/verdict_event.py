"""A monitoring verdict as a Prefect event: the training deployment's drift trigger
(prefect.yaml) retrains on the drift event, and the UI's Event Feed shows every verdict. Also
says, for people, what will retrain and why not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefect import task

from tasks.core.config import Params
from tasks.lifecycle.deployments import (
    DRIFT_EVENT,
    RETRAIN_PENDING_LABEL,
    TRAINING_DEPLOYMENT,
    drift_triggers,
    pending_retrain,
)
from tasks.lifecycle.monitor import MonitorOutcome
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA

EVENT_DELIVERY_TIMEOUT_S = 5

# One Prefect event per verdict: the training deployment's trigger (prefect.yaml) retrains on
# the drift event, and the UI's Event Feed shows every verdict.
VERDICT_EVENTS = {
    NO_DRIFT: "mlcycle.monitor.ok",
    DRIFT: DRIFT_EVENT,
    NOT_ENOUGH_DATA: "mlcycle.monitor.not-enough-data",
}
RESOURCE_PREFIX = "mlcycle.model"  # a verdict's resource: mlcycle.model.<name>.v<version>
HOW_TO_RETRAIN = (
    "start a Prefect server (`make prefect-ui`), `export PREFECT_API_URL="
    "http://127.0.0.1:4200/api`, `make deploy` and `make worker`"
)


@dataclass(frozen=True)
class VerdictEvent:
    """What :func:`emit_verdict` sends: the event name, its resource and its payload."""

    name: str
    resource: dict[str, str]
    payload: dict[str, object]


def verdict_event(outcome: MonitorOutcome, retraining: str | None = None) -> VerdictEvent:
    """The verdict of ``outcome`` as a Prefect event: resource the served model version,
    payload the summary (decision, a one-line text, rows, what drifted, the numbers).
    ``retraining``: the run already on its way to answer it (the resource's
    ``mlcycle.retrain-pending`` label says "true", and the drift trigger ignores the event)."""
    served, result = outcome.served, outcome.result
    drifted = [check.name for check in result.drifted]
    summary = f"{served.name} v{served.version}: {result.decision} over {result.rows} rows" + (
        f" (drifted: {', '.join(drifted)})" if drifted else ""
    )
    return VerdictEvent(
        name=VERDICT_EVENTS[result.decision],
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}.{served.name}.v{served.version}",
            "prefect.resource.name": f"{served.name} v{served.version}",
            "mlcycle.model.name": served.name,
            "mlcycle.model.version": served.version,
            "mlcycle.model.alias": served.alias,
            RETRAIN_PENDING_LABEL: "true" if retraining else "false",
        },
        payload={
            "decision": result.decision,
            "summary": summary,
            "rows": result.rows,
            "labelled": result.labelled,
            "drifted": drifted,
            "metrics": result.metrics(),
            "source": outcome.source,
            # when the compared rows were logged (seconds since the epoch): what the verdict covers
            "logged_from": outcome.logged[0] if outcome.logged else None,
            "logged_to": outcome.logged[1] if outcome.logged else None,
            "report": str(outcome.report),
            "mlflow_run_id": outcome.run_id,
            "retraining": retraining,
        },
    )


def emit_verdict(params: Params, outcome: MonitorOutcome) -> str:
    """Send the verdict's event to the Prefect API and say, for people, what retrains: on
    drift, the training deployment's drift trigger (an automation on the server), debounced
    by ``monitor.cooldown_hours``; the promotion gate still decides what is served."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    answering = outcome.result.decision == DRIFT and os.environ.get("PREFECT_API_URL")
    retraining = pending_retrain(params.schedule.training_slot) if answering else None
    event = verdict_event(outcome, retraining)
    sent = emit_event(event=event.name, resource=event.resource, payload=event.payload)
    EventsWorker.drain_all(timeout=EVENT_DELIVERY_TIMEOUT_S)  # delivered before the process ends
    sent_line = f"event {event.name} sent ({sent.id})" if sent else f"event {event.name} not sent"
    if outcome.result.decision != DRIFT:
        return f"no retraining: {outcome.result.decision} ({sent_line})"
    if not params.monitor.retrain_on_drift:
        return f"no retraining: monitor.retrain_on_drift is false ({sent_line})"
    if not os.environ.get("PREFECT_API_URL"):
        return f"drift, but no retraining: no Prefect server with deployments; {HOW_TO_RETRAIN}"
    if retraining:
        return f"drift: {sent_line}; a retraining is already on its way ({retraining})"
    return f"drift: {sent_line}; {drift_trigger_line()}"


def drift_trigger_line() -> str:
    """What the server will do with a drift event: the training deployment's drift trigger,
    or why nothing retrains."""
    from prefect.exceptions import ObjectNotFound

    try:
        triggers = drift_triggers()
    except ObjectNotFound:
        return f"but {TRAINING_DEPLOYMENT} is not deployed, nothing retrains; {HOW_TO_RETRAIN}"
    if not triggers:
        return (
            f"but {TRAINING_DEPLOYMENT} has no drift trigger, nothing retrains: "
            "`mlcycle deployments apply` (make deploy) creates it"
        )
    if not triggers[0].enabled:
        return f"but its trigger '{triggers[0].name}' is disabled (monitor.retrain_on_drift)"
    return (
        f"the trigger '{triggers[0].name}' runs {TRAINING_DEPLOYMENT} unless it ran one within "
        "monitor.cooldown_hours"
    )


emit_verdict_task = task(name="emit-verdict", retries=1, retry_delay_seconds=5)(emit_verdict)

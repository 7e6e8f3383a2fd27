"""The monitor's verdict as a Prefect event: the name the training deployment's trigger expects
(prefect.yaml), the served model version as its resource, the summary as its payload."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.lifecycle.deployments import DRIFT_EVENT
from tasks.lifecycle.monitor import MonitorOutcome
from tasks.lifecycle.monitor_served import Served
from tasks.lifecycle.verdict_event import verdict_event
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, Check, DriftResult
from tests.helpers import REPO_ROOT


def outcome(decision: str, logged: tuple[float, float] | None = (100.0, 160.0)) -> MonitorOutcome:
    drifted = decision == DRIFT
    checks = (
        Check(
            "input", "input", "drift_share", 0.6 if drifted else 0.1, 0.3, drifted, True, "ks", ""
        )
        if decision != NOT_ENOUGH_DATA
        else None,
    )
    result = DriftResult(
        decision=decision,
        rows=400 if decision != NOT_ENOUGH_DATA else 10,
        checks=tuple(check for check in checks if check),
        drift_share=0.6 if drifted else None,
        live_accuracy=None,
        labelled=0,
    )
    served = Served("digits", "champion", "7", "run-id")
    return MonitorOutcome(served, result, Path("report.html"), "mlflow-run", "log", logged)


@pytest.mark.parametrize(
    ("decision", "name"),
    [
        (DRIFT, "mlcycle.monitor.drift"),
        (NO_DRIFT, "mlcycle.monitor.ok"),
        (NOT_ENOUGH_DATA, "mlcycle.monitor.not-enough-data"),
    ],
)
def test_each_verdict_has_its_own_event(decision, name):
    event = verdict_event(outcome(decision))
    assert event.name == name
    assert event.resource["prefect.resource.id"] == "mlcycle.model.digits.v7"
    assert (event.resource["mlcycle.model.name"], event.resource["mlcycle.model.version"]) == (
        "digits",
        "7",
    )
    assert event.payload["decision"] == decision
    assert event.payload["mlflow_run_id"] == "mlflow-run"


def test_a_drift_payload_says_what_drifted_and_which_rows_it_judged():
    event = verdict_event(outcome(DRIFT))
    assert event.payload["summary"] == "digits v7: drift over 400 rows (drifted: input)"
    assert event.payload["drifted"] == ["input"]
    assert event.payload["metrics"]["input.drift_share"] == 0.6
    assert (event.payload["logged_from"], event.payload["logged_to"]) == (100.0, 160.0)
    batch = verdict_event(outcome(DRIFT, logged=None))  # a --batch file: no logged rows
    assert batch.payload["logged_from"] is None


def test_the_training_deployments_trigger_expects_the_drift_event():
    """prefect.yaml's trigger and the monitor's event name are one string: the trigger matches
    the event's resource and carries why the run happened."""
    deployments = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    [training] = [d for d in deployments if d["entrypoint"].endswith(":training_pipeline")]
    [trigger] = training["triggers"]
    assert trigger["expect"] == [DRIFT_EVENT] == [verdict_event(outcome(DRIFT)).name]
    assert trigger["posture"] == "Reactive" and trigger["threshold"] == 1
    assert trigger["match"]["prefect.resource.id"] == "mlcycle.model.*"
    assert "{{ event.payload.summary }}" in trigger["parameters"]["reason"]
    assert "MLCYCLE_DRIFT_COOLDOWN_S" in trigger["within"]


def test_the_trigger_waits_the_cooldown_and_starts_the_training_after_the_delay(tmp_path):
    """monitor.cooldown_hours and monitor.retrain_delay_minutes, as `deployments apply` fills
    prefect.yaml's placeholders, give Prefect's trigger its window and its action's delay; the
    read-back after `prefect deploy` reads the delay from that action."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from tasks.core.config import load_params
    from tasks.lifecycle.deployments import placeholder_values, scheduled_after_s

    params = load_params(REPO_ROOT / "params.yaml")
    params = params.model_copy(
        update={
            "monitor": params.monitor.model_copy(
                update={"cooldown_hours": 0.5, "retrain_delay_minutes": 2.5}
            )
        }
    )
    text = (REPO_ROOT / "prefect.yaml").read_text()
    for key, value in placeholder_values(params, tmp_path).items():
        text = text.replace("{{ " + key + " }}", value)
    deployments = yaml.safe_load(text)["deployments"]
    [training] = [d for d in deployments if d["entrypoint"].endswith(":training_pipeline")]
    [spec] = training["triggers"]
    spec = {k: v for k, v in spec.items() if k != "type"}
    trigger = DeploymentEventTrigger(**spec)
    assert trigger.within.total_seconds() == 1800
    trigger.set_deployment_id(__import__("uuid").uuid4())
    assert scheduled_after_s(trigger.as_automation()) == 150


def test_the_trigger_ignores_drift_while_a_retraining_is_on_its_way():
    """Prefect's `within` debounces per fixed period, not per episode: a drift event just after
    a period's end would retrain again while the first retraining is still on its way. The
    monitor labels such events, and prefect.yaml's trigger matches only the others."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource

    deployments = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    [training] = [d for d in deployments if d["entrypoint"].endswith(":training_pipeline")]
    [spec] = training["triggers"]
    trigger = DeploymentEventTrigger(expect=set(spec["expect"]), match=spec["match"])
    first = verdict_event(outcome(DRIFT))
    again = verdict_event(outcome(DRIFT), retraining="flow run 'calm-fox', Scheduled")
    assert first.resource["mlcycle.retrain-pending"] == "false"
    assert again.resource["mlcycle.retrain-pending"] == "true"
    assert again.payload["retraining"] == "flow run 'calm-fox', Scheduled"
    assert trigger.match.includes([Resource(first.resource)])
    assert not trigger.match.includes([Resource(again.resource)])

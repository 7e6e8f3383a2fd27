"""Schedules that fire, watched as a user would: `mlcycle deployments apply` with a one-minute
cron on a real `prefect server`, a real worker, and no hand trigger. The server's scheduler
creates the run and the worker finishes it; a server whose scheduler does not run (its
service switched off, as SQLAlchemy 2.1 broke it) gets a warning from the next apply."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.config import apply_params, load_params
from tasks.lifecycle.deployments import SCHEDULER_GRACE_S
from tests.integration.helpers import PrefectServer, Worker, copy_project, mlcycle

pytestmark = pytest.mark.slow

EVERY_MINUTE = "* * * * *"


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone with a champion (monitoring has something to judge), monitoring every minute."""
    root = copy_project(ran_project, tmp_path_factory.mktemp("scheduled"))
    params_file = root / "params.yaml"
    apply_params(
        load_params(params_file, overrides=[f"schedule.monitor_cron={EVERY_MINUTE}"]), params_file
    )
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrefectServer, ...]]:
    healthy = PrefectServer(tmp_path_factory.mktemp("scheduler-on")).start()
    broken = PrefectServer(
        tmp_path_factory.mktemp("scheduler-off"), PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false"
    ).start()
    yield healthy, broken
    healthy.stop()
    broken.stop()


def apply(project: Path, server: PrefectServer):
    return mlcycle(
        "deployments",
        "apply",
        cwd=project,
        PREFECT_API_URL=server.url,
        PREFECT_HOME=str(server.root),
    )


def scheduled_runs(server: PrefectServer, name: str) -> list:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with SyncPrefectClient(server.url) as client:
        deployment = client.read_deployment_by_name(name)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return [run for run in runs if run.auto_scheduled]


def test_a_one_minute_schedule_fires_and_a_dead_scheduler_is_named(project, servers):
    healthy, broken = servers
    first = apply(project, broken)
    applied_to_broken = time.monotonic()
    assert "warning" not in first.stderr, first.stderr  # nothing to judge yet
    apply(project, healthy)
    worker = Worker(project, healthy, project.parent / "worker.log")
    try:
        deadline = time.monotonic() + 240  # the scheduler's loop, the minute, the worker's poll
        while True:
            runs = scheduled_runs(healthy, "monitoring/hourly")
            finished = [r for r in runs if r.state and r.state.type.value == "COMPLETED"]
            failed = [r for r in runs if r.state and r.state.type.value in {"FAILED", "CRASHED"}]
            assert not failed, (failed[0].state, worker.log.read_text()[-3000:])
            if finished or time.monotonic() > deadline:
                break
            time.sleep(3)
    finally:
        worker.stop()
    assert finished, (
        f"no scheduled run completed within 240 s: {[(r.name, r.state_type) for r in runs]}\n"
        + worker.log.read_text()[-3000:]
    )
    assert finished[0].created_by is None or finished[0].created_by.type != "AUTOMATION"
    server_log = (healthy.root / "server.log").read_text()
    assert not [line for line in server_log.splitlines() if "ERROR" in line], server_log[-3000:]

    # a healthy scheduler: no warning; a dead one: named, once its schedule had time to fire
    assert "warning" not in apply(project, healthy).stderr
    time.sleep(max(0.0, SCHEDULER_GRACE_S + 5 - (time.monotonic() - applied_to_broken)))
    warned = apply(project, broken)
    assert scheduled_runs(broken, "monitoring/hourly") == []
    for name in ("training-pipeline/scheduled", "monitoring/hourly"):
        assert f"scheduler has created no run of {name} since" in warned.stderr, warned.stderr


def test_a_drift_trigger_that_is_not_created_is_named(project, servers, tmp_path):
    """prefect.yaml's trigger expecting another event (a typo): apply fails, saying so."""
    _, server = servers
    broken = copy_project(project, tmp_path)
    prefect_file = broken / "prefect.yaml"
    prefect_file.write_text(
        prefect_file.read_text().replace("- mlcycle.monitor.drift", "- mlcycle.monitor.drfit")
    )
    result = mlcycle(
        "deployments",
        "apply",
        cwd=broken,
        check=False,
        PREFECT_API_URL=server.url,
        PREFECT_HOME=str(server.root),
    )
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("mlcycle: error:")]
    assert line == (
        "mlcycle: error: the drift trigger of training-pipeline/scheduled (prefect.yaml "
        "`triggers:`) was not created as params.yaml says: 0 automations on it expect "
        "mlcycle.monitor.drift, expected 1; check prefect.yaml and run `mlcycle deployments "
        "apply` again"
    ), result.stderr
    assert "Traceback" not in result.stderr

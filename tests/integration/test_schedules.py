"""Schedules that fire, watched as a user would: `mlcycle deployments apply` with a one-minute
cron on a real `prefect server`, a real worker, and no hand trigger. The server's scheduler
creates the run and the worker finishes it; a server whose scheduler does not run (its
service switched off, as SQLAlchemy 2.1 broke it) is named by the check `apply` runs first.

The scheduler check is judged as of SCHEDULER_GRACE_S later (its ``now``) instead of waited
for: the module waits for the next minute and the worker's poll, not longer. (A 2 s poll made
the SQLite server log "database is locked" on a loaded machine.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.config import apply_params, load_params
from tasks.lifecycle.deployments import SCHEDULER_GRACE_S, scheduler_problems
from tests.integration.helpers import PrefectServer, Worker, copy_project, mlcycle

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EVERY_MINUTE = "* * * * *"
FIRES_WITHIN_S = 180  # the next minute, the worker's 10 s poll, the monitoring run itself


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone with a champion (monitoring has something to judge), monitoring every minute."""
    root = copy_project(ran_project, tmp_path_factory.mktemp("scheduled"))
    params_file = root / "params.yaml"
    apply_params(
        load_params(params_file, overrides=[f"schedule.monitor_cron={EVERY_MINUTE}"]),
        params_file,
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


def problems_after_the_grace(server: PrefectServer) -> list[str]:
    """What `apply`'s scheduler check says of ``server`` once SCHEDULER_GRACE_S has passed
    (judged at that time, in this process, rather than waited for)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    later = datetime.now(UTC) + timedelta(seconds=SCHEDULER_GRACE_S + 5)
    with temporary_settings({PREFECT_API_URL: server.url}):
        return scheduler_problems(now=later)


def test_a_one_minute_schedule_fires_and_a_dead_scheduler_is_named(project, servers):
    healthy, broken = servers
    first = apply(project, broken)
    assert "warning" not in first.stderr, first.stderr  # nothing to judge yet
    applied = datetime.now(UTC)
    apply(project, healthy)
    worker = Worker(project, healthy, project.parent / "worker.log")
    started = time.monotonic()
    try:
        while True:
            runs = scheduled_runs(healthy, "monitoring/hourly")
            finished = [r for r in runs if r.state and r.state.type.value == "COMPLETED"]
            failed = [r for r in runs if r.state and r.state.type.value in {"FAILED", "CRASHED"}]
            assert not failed, (failed[0].state, worker.log.read_text()[-3000:])
            if finished or time.monotonic() - started > FIRES_WITHIN_S:
                break
            time.sleep(1)
    finally:
        worker.stop()
    assert finished, (
        f"no scheduled run completed within {FIRES_WITHIN_S} s: "
        f"{[(r.name, r.state_type) for r in runs]}\n" + worker.log.read_text()[-3000:]
    )
    assert finished[0].created_by is None or finished[0].created_by.type != "AUTOMATION"
    server_log = (healthy.root / "server.log").read_text()
    assert not [line for line in server_log.splitlines() if "ERROR" in line], server_log[-3000:]

    # a healthy scheduler filled both schedules since the apply; a dead one filled none, and
    # the check `apply` runs names both deployments once the grace has passed
    for name in ("training-pipeline/scheduled", "monitoring/hourly"):
        assert [r for r in scheduled_runs(healthy, name) if r.created >= applied], name
    assert scheduled_runs(broken, "monitoring/hourly") == []
    warned = problems_after_the_grace(broken)
    for name in ("training-pipeline/scheduled", "monitoring/hourly"):
        assert any(f"scheduler has created no run of {name} since" in line for line in warned)


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

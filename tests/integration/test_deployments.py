"""Prefect deployments, a work pool and a worker against a real `prefect server` on a loopback
port: the Prefect CLI lists our objects, `mlcycle deployments apply` registers the schedules of
params.yaml, a worker runs UI-style triggered runs one at a time in the checkout, and schedules
survive restarts of the server and the worker."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tasks.core.config import load_params
from tests.integration.helpers import BIN, PrefectServer, Worker, copy_project, mlcycle, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PREFECT_LISTINGS = (
    ("deployment", "ls"),
    ("work-pool", "ls"),
    ("flow", "ls"),
    ("flow-run", "ls"),
)
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_prefect_cli_lists_our_server_objects(prefect_server: str):
    """FastAPI 0.151-0.154 answered these with 422 (pinned to 0.150.0 in pyproject.toml)."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    for command in PREFECT_LISTINGS:
        result = prefect_cli(*command, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"prefect {' '.join(command)}:\n{output[-2000:]}"
        assert (
            "Unprocessable" not in output and "422 " not in output and "Traceback" not in output
        ), output[-2000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("deployments-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checkout(project_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(project_template, tmp_path_factory.mktemp("checkout"))


def client_of(server: PrefectServer):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server.url)


def trigger(server: PrefectServer, name: str, parameters: dict | None = None):
    """A run of deployment ``name`` now, as the UI's Run button creates it."""
    with client_of(server) as client:
        deployment = client.read_deployment_by_name(name)
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def wait_for_final(server: PrefectServer, run_ids: list, worker: Worker, timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    with client_of(server) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
            if all(run.state and run.state.type.value in FINAL for run in runs):
                return runs
            if time.monotonic() > deadline or worker.process.poll() is not None:
                states = [run.state.type.value if run.state else None for run in runs]
                raise AssertionError(
                    f"runs {states}; worker log:\n{worker.log.read_text()[-4000:]}"
                )
            time.sleep(2)


def task_span(server: PrefectServer, run_id) -> tuple[datetime, datetime]:
    """When the first task of flow run ``run_id`` started and its last one ended."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with client_of(server) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    spans = [(task.start_time, task.end_time) for task in tasks if task.end_time]
    assert spans, tasks
    return min(start for start, _ in spans), max(end for _, end in spans)


def run_log(server: PrefectServer, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with client_of(server) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return "\n".join(entry.message for entry in logs)


@pytest.fixture(scope="module")
def applied(server: PrefectServer, checkout: Path) -> str:
    """`mlcycle deployments apply` in the checkout; its output."""
    return mlcycle("deployments", "apply", cwd=checkout, **server_env(server)).stdout


def test_deployments_apply_registers_the_schedules_of_params_yaml(server, checkout, applied):
    assert "training-pipeline/scheduled" in applied and "monitoring/hourly" in applied
    params = load_params(checkout / "params.yaml")
    with client_of(server) as client:
        pool = client.read_work_pool(params.schedule.work_pool)
        assert pool.type == "process"
        training = client.read_deployment_by_name("training-pipeline/scheduled")
        monitoring = client.read_deployment_by_name("monitoring/hourly")
        slot = client.read_global_concurrency_limit_by_name(params.schedule.training_slot)
    assert slot.limit == 1
    for deployment, cron in (
        (training, params.schedule.retrain_cron),
        (monitoring, params.schedule.monitor_cron),
    ):
        assert deployment.work_pool_name == params.schedule.work_pool
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            cron,
            params.schedule.timezone,
        )
        assert schedule.active
        directory = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
        assert Path(directory["directory"]) == checkout.resolve()
    # the UI's parameter form: every params.yaml section with its values
    assert training.parameters == {"params": params.model_dump(mode="json")}
    assert set(training.parameter_openapi_schema["definitions"]) >= {"Params", "ScheduleParams"}

    # the listing command sees them (wide enough that Rich cuts no name short)
    listed = prefect_cli("deployment", "ls", env={**server.env, "COLUMNS": "250"})
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in ("training-pipeline/scheduled", "monitoring/hourly"):
        assert name in listed.stdout, listed.stdout


def server_env(server: PrefectServer) -> dict[str, str]:
    return {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.root)}


def test_two_triggers_at_once_train_one_at_a_time_and_monitor_once(server, checkout, applied):
    worker = Worker(checkout, server, checkout.parent / "worker.log")
    try:
        params = load_params(checkout / "params.yaml").model_dump(mode="json")
        params["train"]["seed"] = 1  # "Custom run" with a changed parameter
        runs = [
            trigger(server, "training-pipeline/scheduled", {"params": params}) for _ in range(2)
        ]
        monitors = [trigger(server, "monitoring/hourly") for _ in range(2)]
        finished = wait_for_final(server, [run.id for run in runs], worker)
        monitored = wait_for_final(server, [run.id for run in monitors], worker)
    finally:
        worker.stop()
    # the monitoring deployment's limit: never two monitor runs at once (one that finds the
    # other running is cancelled; had the worker taken them in turn, they ran one after another)
    ran = sorted(
        (run.start_time, run.end_time) for run in monitored if run.state.type.value != "CANCELLED"
    )
    assert ran and (len(ran) == 1 or ran[0][1] <= ran[1][0]), monitored
    assert [run.state.type.value for run in finished] == ["COMPLETED", "COMPLETED"], [
        run_log(server, run.id)[-3000:] for run in finished
    ]
    # one at a time: every task of one run (the whole pipeline holds the training slot)
    # ended before the other run's first task started
    first, second = sorted(task_span(server, run.id) for run in finished)
    assert first[1] <= second[0], (first, second)
    logs = [run_log(server, run.id) for run in finished]
    waited = [log for log in logs if "waiting for the training slot" in log]
    assert len(waited) == 1, (
        "exactly one run waited for the other, and said so:\n"
        + "\n---\n".join(log[-2500:] for log in logs)
    )
    assert "training slot" in waited[0] and "is free: this run goes on" in waited[0]

    # the changed parameter reached params.yaml and the runs; one champion
    assert yaml.safe_load((checkout / "params.yaml").read_text())["train"]["seed"] == 1
    listing = mlcycle("models", cwd=checkout).stdout
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    assert [row[1] for row in rows].count("challenger,champion") + [row[1] for row in rows].count(
        "champion"
    ) == 1, listing
    assert "Data and pipelines are up to date." in run(["dvc", "status"], cwd=checkout).stdout
    changed = run(["git", "status", "--porcelain"], cwd=checkout).stdout.split("\n")
    assert {line[3:] for line in changed if line} <= {"params.yaml", "dvc.lock"}, changed


def test_schedules_survive_restarts_of_the_server_and_the_worker(server, checkout, applied):
    with client_of(server) as client:
        before = {
            name: client.read_deployment_by_name(name).schedules
            for name in ("training-pipeline/scheduled", "monitoring/hourly")
        }
    server.stop()
    server.start()
    worker = Worker(checkout, server, checkout.parent / "worker-2.log")
    try:
        with client_of(server) as client:
            for name, schedules in before.items():
                after = client.read_deployment_by_name(name).schedules
                assert [(s.schedule, s.active) for s in after] == [
                    (s.schedule, s.active) for s in schedules
                ]
        # the restarted worker still runs the deployments
        monitoring = trigger(server, "monitoring/hourly")
        [finished] = wait_for_final(server, [monitoring.id], worker)
    finally:
        worker.stop()
    assert finished.state.type.value == "COMPLETED", run_log(server, monitoring.id)[-3000:]

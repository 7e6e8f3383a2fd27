"""Outages are survived: `mlcycle run` against a real `prefect server` (PREFECT_API_URL) that
goes away mid-run, and runs that wait for the training slot while a user stops them.

The promises, timed: the command ends within 60 s of its Prefect API dying, with one
`mlcycle: error:` line naming the API and what was lost; the next `mlcycle run` takes over the
slot the dead run held and registers the model it had evaluated, retraining nothing; a Ctrl-C
or SIGTERM ends a run waiting for the slot within 5 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.core.config import load_params
from tests.faults.test_faults import (
    registered_versions,
    runs_of,
    wait_until_no_process_in,
)
from tests.integration.helpers import BackgroundRun, PrefectServer, copy_project, mlcycle

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

API_GONE_WITHIN_S = 60  # the command ends this soon after its Prefect API dies
STOPPED_WITHIN_S = 5  # a Ctrl-C or SIGTERM ends a run waiting for the slot this soon


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("outage-server")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def server_up(server: PrefectServer) -> None:
    """A test that killed the module's server and failed before starting it again leaves it
    dead: the next test starts it (same port, same database), not fail on its absence."""
    if server.process is None or server.process.poll() is not None:
        server.start()


@pytest.fixture
def project(ran_project: Path, tmp_path: Path) -> Path:
    return copy_project(ran_project, tmp_path)


def server_env(server: PrefectServer) -> dict[str, str]:
    return {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.root)}


def kill_9(server: PrefectServer) -> None:
    """The server dies as a `kill -9` (or a power cut) ends it: nothing is released."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


def flow_run_state(server: PrefectServer, flow_run_id: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(server.url) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def slot_state(server: PrefectServer, name: str) -> int:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(server.url) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_the_prefect_server_dying_mid_run_ends_it_and_the_next_run_recovers(project, server):
    env = server_env(server)
    slot = load_params(project / "params.yaml").schedule.training_slot
    pipeline = BackgroundRun(
        project, "--set", "train.seed=21", **env
    )  # retrains: evaluate runs again
    # The evaluation is done (its line comes before the stage records it): the run reaches the
    # registration, which needs the API, seconds before the watch calls the API lost (15 s).
    pipeline.wait_for("evaluate: test accuracy")
    kill_9(server)
    died = time.monotonic()
    pipeline.process.wait(timeout=API_GONE_WITHIN_S + 30)
    seconds = time.monotonic() - died
    pipeline.reader.join(10)

    # one clear line, within the promise, naming the API and what was lost
    assert pipeline.process.returncode == 1, pipeline.output[-3000:]
    assert seconds < API_GONE_WITHIN_S, f"took {seconds:.0f} s to end:\n{pipeline.output[-3000:]}"
    errors = [line for line in pipeline.lines if line.startswith("mlcycle: error:")]
    assert len(errors) == 1, pipeline.output[-3000:]
    error = errors[0]
    assert error == pipeline.lines[-1], pipeline.output[-3000:]
    assert f"the Prefect API at {server.url} stopped answering" in error, error
    assert "was evaluated but not registered; `mlcycle register` (or the next `mlcycle run`)" in (
        error
    ), error
    assert "Traceback" not in pipeline.output
    wait_until_no_process_in(project, timeout_s=10)
    lost = runs_of(project)[0]
    assert lost.info.status == "FINISHED"
    assert "stopped answering" in lost.data.tags["mlcycle.unregistered"]  # marked, and why
    assert [str(v.version) for v in registered_versions(project)] == ["1"]
    lost_flow_run = lost.data.tags["mlcycle.prefect_flow_run_id"]

    # the server comes back: its restart forgot the slot's lease but not that it is taken
    server.start()
    assert slot_state(server, slot) == 1
    assert flow_run_state(server, lost_flow_run) == "RUNNING"
    started = time.monotonic()
    result = mlcycle("run", cwd=project, check=False, **env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert time.monotonic() - started < 120, "the next run waited for the dead run's slot"
    [took_over] = [line for line in output.splitlines() if "took over the training slot" in line]
    assert f"from flow run {lost_flow_run} (pid {pipeline.process.pid} on " in took_over
    assert f"its process (pid {pipeline.process.pid}) is gone" in took_over
    assert "its flow run is marked CRASHED" in took_over
    assert flow_run_state(server, lost_flow_run) == "CRASHED"
    assert "recovered: the run left evaluated but unregistered (the Prefect API at" in output, (
        output[-4000:]
    )
    assert "is registered now: mlcycle-classifier version 2" in output, output[-4000:]
    assert "stages run: none" in output  # nothing retrained
    versions = registered_versions(project)
    assert sorted(str(v.version) for v in versions) == ["1", "2"]  # registered once
    [recovered] = [v for v in versions if str(v.version) == "2"]
    assert recovered.tags["mlcycle.mlflow_run_id"] == lost.info.run_id
    tags = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(lost.info.run_id).data.tags
    assert "mlcycle.unregistered" not in tags
    assert slot_state(server, slot) == 0  # given back


@pytest.mark.parametrize(
    ("signum", "code", "how"),
    [
        pytest.param(signal.SIGINT, 130, "interrupted (Ctrl-C)", id="ctrl-c"),
        pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM)", id="sigterm"),
    ],
)
def test_a_signal_ends_a_run_waiting_for_the_slot_within_5_s(project, server, signum, code, how):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.core.slots import holding_slot

    slot = load_params(project / "params.yaml").schedule.training_slot
    with (
        temporary_settings(updates={PREFECT_API_URL: server.url}),
        holding_slot(slot, "another training run (this test)", 30),
    ):
        waiting = BackgroundRun(project, **server_env(server))
        waiting.wait_for("waiting for the training slot")
        seconds = waiting.signal_group(signum)
        assert waiting.process.returncode == code, waiting.output[-3000:]
        assert seconds < STOPPED_WITHIN_S, f"took {seconds:.1f} s to stop"
        assert waiting.lines[-1].startswith(f"mlcycle: stopped, {how}"), waiting.output[-3000:]
        assert "Traceback" not in waiting.output
        wait_until_no_process_in(project, timeout_s=3)
        assert slot_state(server, slot) == 1  # still ours: the stopped run took nothing
    assert slot_state(server, slot) == 0


def test_a_worker_dying_mid_run_is_named_and_the_next_triggered_run_recovers(project, server):
    """The machine under a worker dies mid-training (the worker and its flow run's process,
    `kill -9`): the next triggered run takes over the slot, says whose it was, marks the dead
    flow run and its MLflow run, and completes; nothing from the dead run is registered."""
    import json

    from tests.integration.helpers import Worker
    from tests.integration.test_deployments import trigger, wait_for_final

    env = server_env(server)
    mlcycle("deployments", "apply", cwd=project, **env)
    params = load_params(project / "params.yaml").model_dump(mode="json")
    long_run = {
        **params,
        "train": {**params["train"], "epochs": 300, "early_stopping_patience": None},
    }
    worker = Worker(project, server, project.parent / "worker.log")
    try:
        dead = trigger(server, "training-pipeline/scheduled", {"params": long_run})
        deadline = time.monotonic() + 240
        while "stage 'train' is stale" not in run_logs(server, dead.id):
            assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
            time.sleep(2)
        holder = json.loads((project / ".mlcycle" / "workspace.lock").read_text())
        os.killpg(worker.process.pid, signal.SIGKILL)  # the worker ...
        os.kill(holder["pid"], signal.SIGKILL)  # ... and the flow run it started
        worker.process.wait()
        wait_until_no_process_in(project)
        assert flow_run_state(server, dead.id) == "RUNNING"  # the server cannot know
    finally:
        worker.stop()
    versions_before = registered_versions(project)

    worker = Worker(project, server, project.parent / "worker-2.log")
    try:
        params["train"]["seed"] = 5  # retrains (a run of the same params would reuse the model)
        recovery = trigger(server, "training-pipeline/scheduled", {"params": params})
        [finished] = wait_for_final(server, [recovery.id], worker)
    finally:
        worker.stop()
    log = run_logs(server, recovery.id)
    assert finished.state.type.value == "COMPLETED", log[-3000:]
    slot = params["schedule"]["training_slot"]
    took_over = f"took over the training slot (Prefect global concurrency limit '{slot}')"
    assert f"{took_over} from flow run {dead.id}" in log, log[-3000:]
    assert "is marked KILLED and nothing was registered" in log, log[-3000:]
    assert "died without finishing" in log, log[-3000:]  # the workspace lock noticed too
    assert flow_run_state(server, dead.id) == "CRASHED"
    assert any(run.info.status == "KILLED" for run in runs_of(project)), "the dead MLflow run"
    assert len(registered_versions(project)) == len(versions_before) + 1  # the recovery's only


def run_logs(server: PrefectServer, flow_run_id) -> str:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with SyncPrefectClient(server.url) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(entry.message for entry in logs)

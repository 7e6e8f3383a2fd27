"""Closing the loop end to end: a project that ran the pipeline serves its champion, traffic is
logged, `mlcycle monitor` judges it against the champion's reference and sends the verdict as
an event to a real `prefect server`, where the drift trigger of `training-pipeline/scheduled`
creates one flow run (once: its window debounces the episode's later drift events)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tasks.core.files import read_split
from tests.helpers import free_port
from tests.integration.helpers import BIN, PrefectServer, copy_project, mlcycle, wait_for_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("monitoring-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained clone; its MLflow store records the copy's artifact
    folders (``copy_project``), since this module moves a logged reference away and back."""
    return copy_project(ran_project, tmp_path_factory.mktemp("monitored"))


@pytest.fixture(scope="module")
def app(project: Path) -> Iterator[str]:
    port = free_port()
    log = project / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "mlcycle"), "serve", "--port", str(port)],
            cwd=project,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ready", process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def send(url: str, images: np.ndarray) -> None:
    for start in range(0, len(images), 100):
        chunk = images[start : start + 100]
        body = {"images": chunk[..., 0].tolist()}
        response = httpx.post(f"{url}/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
    time.sleep(1.5)  # the log's writer flushes every 0.5 s


def monitor(project: Path, server: PrefectServer, *args: str) -> subprocess.CompletedProcess:
    return mlcycle(
        "monitor",
        *args,
        cwd=project,
        check=False,
        PREFECT_API_URL=server.url,
        PREFECT_HOME=str(server.root),
    )


def drift_runs(server: PrefectServer) -> list:
    """The training deployment's runs that its schedule did not create: the drift trigger's."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with SyncPrefectClient(server.url) as client:
        deployment = client.read_deployment_by_name("training-pipeline/scheduled")
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return [run for run in runs if not run.auto_scheduled]


def wait_for_drift_runs(server: PrefectServer, count: int, timeout_s: float = 30) -> list:
    """The training deployment's runs once ``count`` exist (the automation acts within
    seconds of the event); a failure naming how many there were."""
    deadline = time.monotonic() + timeout_s
    while len(runs := drift_runs(server)) < count and time.monotonic() < deadline:
        time.sleep(1)
    assert len(runs) == count, f"{len(runs)} training runs, expected {count}"
    return runs


def verdict_events(server: PrefectServer, count: int, timeout_s: float = 30) -> list[dict]:
    """The mlcycle.monitor.* events the server stored (it stores them within seconds), oldest
    first, once ``count`` are there or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.post(
            f"{server.url}/events/filter",
            json={"filter": {"event": {"prefix": ["mlcycle.monitor."]}, "order": "ASC"}},
            timeout=30,
        )
        response.raise_for_status()
        events = response.json()["events"]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(1)


@pytest.mark.e2e
def test_drifted_traffic_triggers_one_retraining_and_clean_traffic_none(project, server, app):
    mlcycle(
        "deployments",
        "apply",
        cwd=project,
        PREFECT_API_URL=server.url,
        PREFECT_HOME=str(server.root),
    )
    test, _ = read_split(project / "data" / "processed", "test")
    held_out = np.concatenate([test.images] * 2)[:400]  # the champion never trained on these

    send(app, held_out)
    clean = monitor(project, server, "--window", "400")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "NO DRIFT" in clean.stdout and "retraining: no retraining: no drift" in clean.stdout
    report = Path(clean.stdout.split("report: ")[1].split()[0])
    assert (project / report).is_file()

    low_contrast = (held_out.astype(np.float32) * 0.3 + 80).astype(np.uint8)
    send(app, low_contrast)
    drifted = monitor(project, server, "--window", "400")
    assert drifted.returncode == 3, drifted.stdout + drifted.stderr
    assert "event mlcycle.monitor.drift sent" in drifted.stdout, drifted.stdout
    assert "the trigger 'retrain on drift' runs training-pipeline/scheduled" in drifted.stdout
    [triggered] = wait_for_drift_runs(server, 1)  # the clean verdict triggered nothing
    assert triggered.created_by and triggered.created_by.type == "AUTOMATION", triggered.created_by
    assert triggered.parameters["reason"].startswith(
        "drift: mlcycle-classifier v1: drift over 400 rows"
    ), triggered.parameters
    assert triggered.parameters["params"]["train"]  # the deployment's params, as deployed
    assert_published(project, server, decision="drift")

    again = monitor(project, server, "--window", "400")  # the same episode: debounced
    assert again.returncode == 3 and "event mlcycle.monitor.drift sent" in again.stdout
    # labelled: a retraining is on its way (the triggered run, Scheduled), which the trigger
    # ignores even after its `within` period has turned over
    assert f"a retraining is already on its way (flow run '{triggered.name}'" in again.stdout
    time.sleep(10)
    assert len(drift_runs(server)) == 1

    # a server restart between the drift and the retraining: the triggered run waits for a
    # worker, and the trigger's window (in the server's database) still holds
    server.stop()
    server.start()
    [waiting] = drift_runs(server)
    assert (waiting.id, waiting.state_type.value) == (triggered.id, "SCHEDULED")
    after_restart = monitor(project, server, "--window", "400")
    assert after_restart.returncode == 3, after_restart.stdout + after_restart.stderr
    time.sleep(10)
    assert len(drift_runs(server)) == 1

    tiny = monitor(project, server, "--window", "10")
    assert tiny.returncode == 4, tiny.stdout + tiny.stderr
    assert "NOT ENOUGH DATA" in tiny.stdout
    events = verdict_events(server, 5)
    assert [event["event"] for event in events] == [
        "mlcycle.monitor.ok",
        "mlcycle.monitor.drift",
        "mlcycle.monitor.drift",
        "mlcycle.monitor.drift",
        "mlcycle.monitor.not-enough-data",
    ]
    resource = events[1]["resource"]
    assert resource["prefect.resource.id"] == "mlcycle.model.mlcycle-classifier.v1"
    pending = [event["resource"]["mlcycle.retrain-pending"] for event in events[1:4]]
    assert pending == ["false", "true", "true"]
    assert events[1]["payload"]["decision"] == "drift" and events[1]["payload"]["drifted"]


def test_a_batch_file_is_judged_and_a_bad_one_named(project, tmp_path):
    test, _ = read_split(project / "data" / "processed", "test")
    batch = tmp_path / "batch.npz"
    np.savez(batch, images=np.roll(test.images, 3, axis=2), labels=test.labels)
    shifted = mlcycle("monitor", "--batch", str(batch), cwd=project, check=False)
    assert shifted.returncode == 3, shifted.stdout + shifted.stderr
    assert "no Prefect server with deployments" in shifted.stdout  # says how, fails nothing

    broken = tmp_path / "broken.npz"
    np.savez(broken, pixels=test.images)
    result = mlcycle("monitor", "--batch", str(broken), cwd=project, check=False)
    assert result.returncode == 1
    assert f"{broken}: missing array 'images'" in result.stderr
    missing = mlcycle("monitor", "--batch", str(tmp_path / "none.npz"), cwd=project, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith(
        "none.npz: no such file (--batch wants an .npz with `images`)"
    )
    assert os.path.exists(project / "mlflow.db")


def test_a_served_version_without_its_reference_is_named(project, tmp_path):
    logged = [p for p in project.rglob("monitoring_reference.npz") if "artifacts" in p.parts]
    assert logged, "the evaluate stage logged no reference"
    aside = [path.rename(tmp_path / f"reference-{n}.npz") for n, path in enumerate(logged)]
    try:
        test, _ = read_split(project / "data" / "processed", "test")
        batch = tmp_path / "batch.npz"
        np.savez(batch, images=test.images)
        refused = mlcycle("monitor", "--batch", str(batch), cwd=project, check=False)
    finally:
        for moved, path in zip(aside, logged, strict=True):
            moved.rename(path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "version 1 has no monitoring reference that can be read" in refused.stderr
    assert "monitoring/monitoring_reference.npz" in refused.stderr


@pytest.mark.e2e
def test_labelled_feedback_reaches_the_training_data_through_dvc(project, app):
    """Runs last in this module: it retrains the project on its labelled traffic."""
    test, _ = read_split(project / "data" / "processed", "test")
    images, labels = test.images[:40], test.labels[:40]
    answer = httpx.post(f"{app}/predict", json={"images": images[..., 0].tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    ids = answer.json()["prediction_ids"]
    items = [
        {"prediction_id": i, "label": int(label)} for i, label in zip(ids, labels, strict=True)
    ]
    stored = httpx.post(f"{app}/feedback", json={"items": items}, timeout=60)
    assert stored.status_code == 200, stored.text
    again = httpx.post(f"{app}/feedback", json=items[0], timeout=60)
    assert again.status_code == 409, again.text
    raw_before = json.loads((project / "data" / "raw" / "meta.json").read_text())

    result = mlcycle("run", "--set", "collect.feedback=true", cwd=project)
    assert "collect" in result.stdout.split("stages run:")[1].split(";")[0], result.stdout

    raw = json.loads((project / "data" / "raw" / "meta.json").read_text())
    assert raw["feedback_samples"] == 40
    assert sum(raw["class_counts"].values()) == sum(raw_before["class_counts"].values()) + 40
    with np.load(project / "data" / "external" / "feedback.npz") as exported:
        assert exported["images"].shape == (40, *images.shape[1:])
    assert (project / "data" / "external" / "feedback.npz.dvc").is_file()  # versioned by DVC
    assert "Data and pipelines are up to date." in mlcycle_dvc_status(project)


def mlcycle_dvc_status(project: Path) -> str:
    return subprocess.run(
        [str(BIN / "dvc"), "status"], cwd=project, capture_output=True, text=True, check=True
    ).stdout


def assert_published(project: Path, server: PrefectServer, decision: str) -> None:
    """The newest verdict is an MLflow run in mlcycle-monitoring and a Prefect table."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mlcycle-monitoring")
    [newest, *_] = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"]
    )
    assert newest.data.tags["mlcycle.decision"] == decision
    assert newest.data.tags["mlcycle.model_version"] == "1"
    assert newest.data.metrics["drift"] == 1.0 and "input.drift_share" in newest.data.metrics
    assert [a.path for a in client.list_artifacts(newest.info.run_id, "report")]
    with SyncPrefectClient(server.url) as prefect:
        tables = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift-summary"]))
        )
    assert tables and any(decision in (t.description or "") for t in tables)

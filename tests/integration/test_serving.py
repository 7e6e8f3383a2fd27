"""`mlcycle serve` as a real process over a real registry: the champion served, hot reload
when the alias moves (through the deploy step), a broken version never replacing a good one.
The drawing page in Chromium is in tests/browser/test_serving_page.py."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tasks.core.files import read_split
from tasks.core.prediction_log.readers import read_prediction_log
from tasks.lifecycle.deploy import (
    DeployError,
    deploy,
    nothing_to_deploy,
    request_reload,
    wait_until_serving,
)
from tasks.registry.store import CHAMPION
from tasks.registry.versions import create_version
from tests.helpers import WITHIN_SECONDS, free_port
from tests.integration.helpers import BIN, corrupt_logged_model, serving_champion

pytestmark = pytest.mark.slow


def call(url: str, payload: object | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def served(mlflow_server, prefect_server, tmp_path_factory):
    """A workspace with champion v1 and `mlcycle serve` running on it."""
    with serving_champion(
        mlflow_server, prefect_server, tmp_path_factory.mktemp("serving"), "served"
    ) as served:
        yield served


def test_the_champion_answers_like_the_registered_model(served):
    workspace, url, first = served
    test, _ = read_split(workspace.processed, "test")
    status, body = call(f"{url}/predict", {"images": test.images[:5].tolist()})
    assert status == 200 and body["model_version"] == first.version
    local = mlflow.pyfunc.load_model(f"models:/served/{first.version}")
    expected = np.asarray(local.predict(test.images[:5])).argmax(axis=1)  # uint8: its signature
    assert [p["class_index"] for p in body["predictions"]] == expected.tolist()

    buffer = io.BytesIO()
    Image.fromarray(test.images[0][..., 0]).save(buffer, "PNG")
    status, as_png = call(
        f"{url}/predict", {"images": [base64.b64encode(buffer.getvalue()).decode()]}
    )
    assert as_png["predictions"][0] == body["predictions"][0]


def test_metadata_names_the_version_its_data_and_params(served):
    _, url, first = served
    status, meta = call(f"{url}/metadata")
    assert status == 200
    assert meta["model_name"] == "served" and meta["alias"] == "champion"
    assert meta["version"] == first.version
    tags = MlflowClient().get_model_version("served", first.version).tags
    assert meta["mlflow_run_id"] == tags["mlcycle.mlflow_run_id"]
    assert meta["params"]["train.seed"] == "1" and meta["raw_shape"] == [8, 8, 1]
    assert meta["trained_at"].endswith("Z") and meta["class_names"] == [
        "class_0",
        "class_1",
        "class_2",
    ]


def test_deploy_reloads_the_app_without_dropping_requests(served):
    workspace, url, first = served
    test, _ = read_split(workspace.processed, "test")
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            status, body = call(f"{url}/predict", {"images": test.images[:2].tolist()})
            statuses.append(status)
            versions.add(body.get("model_version"))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        better = replace(
            workspace.train(seed=2, epochs=4), metrics={"accuracy": 2.0, "macro_f1": 2.0}
        )
        registration = workspace.register(better)
        assert registration.promoted
        deployment = deploy(registration.version, workspace.params.serve)
        time.sleep(1)
    finally:
        stop.set()
        sender.join()
    assert deployment.action == "reloaded" and deployment.version == registration.version
    assert call(f"{url}/metadata")[1]["version"] == registration.version
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {set(statuses)}"
    assert versions == {first.version, registration.version}

    kept = nothing_to_deploy(registration.champion, workspace.params.serve)
    assert kept.action == "none" and "no promotion: nothing to deploy" in kept.message


def test_an_app_follows_the_alias_by_polling_alone(served, tmp_path):
    """Nobody asks for a reload: an app whose serve.poll_seconds is 1 serves the version the
    champion alias moves to within a few polls (this module's app polls hourly, and stays)."""
    workspace, url, _ = served
    serving = call(f"{url}/ready")[1]["version"]
    versions = {
        v.version for v in MlflowClient().search_model_versions(f"name = '{workspace.name}'")
    }
    [other] = versions - {serving}  # v1, which the module's earlier test replaced
    port = free_port()
    hourly = workspace.params.serve
    workspace.update("serve", port=port, poll_seconds=1.0)  # what the started app reads
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "mlcycle"), "serve"],
            cwd=workspace.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    polling = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(polling, serving, 240, started=process)
        MlflowClient().set_registered_model_alias(workspace.name, CHAMPION, other)
        started = time.monotonic()
        wait_until_serving(polling, other, 60, started=process)
        seconds = time.monotonic() - started
        assert call(f"{url}/ready")[1]["version"] == serving  # no reload was asked of it
    finally:
        MlflowClient().set_registered_model_alias(workspace.name, CHAMPION, serving)
        workspace.update("serve", port=hourly.port, poll_seconds=hourly.poll_seconds)
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
    # a few polls and one model load, not the next hour
    assert seconds < WITHIN_SECONDS, (seconds, (tmp_path / "serve.log").read_text()[-2000:])


def test_a_version_that_fails_to_load_never_replaces_the_served_one(served, mlflow_service):
    workspace, url, _ = served
    service = mlflow_service
    serving = call(f"{url}/ready")[1]["version"]
    broken = workspace.train(seed=3, epochs=2)
    registered = create_version(broken, workspace.name)
    corrupt_logged_model(service, broken.model_id)
    # someone points the alias at it behind the gate's back: the app keeps the old version
    MlflowClient().set_registered_model_alias(workspace.name, CHAMPION, registered.version)
    try:
        assert request_reload(url)
        deadline = time.monotonic() + 30
        ready: dict = {}
        while time.monotonic() < deadline:
            ready = call(f"{url}/ready")[1]
            if ready.get("last_error"):
                break
            time.sleep(0.3)
        assert f"version {registered.version} of 'served' cannot be served" in ready["last_error"]
        assert ready["version"] == serving
        assert call(f"{url}/predict", {"images": [np.zeros((8, 8)).tolist()]})[0] == 200
        # a deploy of that version times out and fails, naming what /ready said
        quick = workspace.params.serve.model_copy(update={"deploy_timeout_s": 2.0})
        with pytest.raises(
            DeployError, match=f"did not serve version {registered.version} within 2 s"
        ):
            deploy(registered.version, quick)
    finally:
        MlflowClient().set_registered_model_alias(workspace.name, CHAMPION, serving)
    assert request_reload(url)
    wait_until_serving(url, serving, 60)


def test_predictions_are_logged_for_monitoring(served):
    workspace, url, _ = served
    sent = np.full((8, 8, 1), 77, dtype=np.uint8)
    assert call(f"{url}/predict", {"images": [sent.tolist()]})[0] == 200
    store = workspace.root / "data" / "serving" / "predictions.sqlite"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = (
            [r for r in read_prediction_log(store) if np.array_equal(r["input"], sent)]
            if store.exists()
            else []
        )
        if rows:
            break
        time.sleep(0.2)
    assert rows and rows[-1]["endpoint"] == "/predict"


def test_deploy_starts_the_app_when_configured_to(served, tmp_path, monkeypatch):
    workspace, _, _ = served
    port = free_port()
    params = workspace.params.serve.model_copy(update={"port": port, "start_on_deploy": True})
    champion = call(f"{served[1]}/ready")[1]["version"]
    monkeypatch.chdir(workspace.root)
    workspace.update("serve", port=port)  # the started app reads params.yaml
    try:
        deployment = deploy(champion, params)
        assert deployment.action == "started" and deployment.pid
        assert call(f"http://127.0.0.1:{port}/metadata")[1]["version"] == champion
        elsewhere = params.model_copy(update={"port": free_port(), "start_on_deploy": False})
        not_running = deploy(champion, elsewhere)
        assert not_running.action == "not-running" and "will serve" in not_running.message
    finally:
        if "deployment" in locals():
            os.killpg(deployment.pid, 15)
        workspace.update("serve", port=int(served[1].rsplit(":", 1)[1]))

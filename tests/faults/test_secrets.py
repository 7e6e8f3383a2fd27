"""A secret planted in the two places a user puts one (issue 19, item 6) never comes out.

``MLFLOW_TRACKING_URI=http://alice:<secret>@127.0.0.1:<port>`` points at a real ``mlflow
server`` (without auth it ignores the login MLflow's client sends), and ``select.storage`` holds
a PostgreSQL URL with a password. The commands a user runs, and the serving app's unauthenticated
answers, are then scanned for the secret: every line of output, the files the commands write,
``/ready`` and ``/metadata`` (a model served, then the tracking server gone), the MLflow runs'
params and tags and the registered versions' tags, and the Prefect run logs, flow and task runs
and artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import free_port
from tests.integration.helpers import BIN, MlflowService, mlcycle, run, wait_for_http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECRET = "s3cr3t-planted"
STORAGE = f"postgresql://me:{SECRET}@127.0.0.1:1/x"

# The user's own files hold what the user wrote there (params.yaml, and dvc.lock, which DVC
# writes from it); everything else a command writes is scanned.
USER_FILES = {"params.yaml", "dvc.lock"}
SKIPPED_FOLDERS = {".git", ".dvc", "data", "mlartifacts"}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


_PREFECT_DUMP = """
import asyncio, json, sys, tasks
from prefect.client.orchestration import get_client
async def main():
    found = {}
    async with get_client() as client:
        for kind in ("logs", "artifacts", "flow_runs", "task_runs"):
            found[kind], offset = [], 0
            while True:
                response = await client._client.post(
                    f"/{kind}/filter", json={"limit": 200, "offset": offset}
                )
                response.raise_for_status()
                page = response.json()
                found[kind] += page
                offset += len(page)
                if len(page) < 200:
                    break
    print(json.dumps(found))
asyncio.run(main())
"""


def prefect_records(cwd: Path, env: dict[str, str]) -> dict[str, list[dict]]:
    """Everything the commands left in Prefect: run logs, artifacts, flow and task runs (their
    parameters and state messages), as the Prefect API returns them."""
    return json.loads(run([sys.executable, "-c", _PREFECT_DUMP], cwd=cwd, **env).stdout)


def mlflow_records(uri: str) -> list[str]:
    """Every run's params and tags, every registered model's and version's tags."""
    client = MlflowClient(uri)
    texts = []
    for experiment in client.search_experiments():
        for found in client.search_runs([experiment.experiment_id]):
            texts.append(f"run {found.info.run_id} params {json.dumps(found.data.params)}")
            texts.append(f"run {found.info.run_id} tags {json.dumps(found.data.tags)}")
    for model in client.search_registered_models():
        texts.append(f"model {model.name} tags {json.dumps(model.tags)}")
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts.append(f"{model.name} v{version.version} tags {json.dumps(version.tags)}")
    return texts


def written_files(root: Path) -> dict[str, str]:
    texts = {}
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if not path.is_file() or parts[0] in SKIPPED_FOLDERS or path.name in USER_FILES:
            continue
        texts[str(path.relative_to(root))] = path.read_bytes().decode(errors="replace")
    return texts


def leaks(outputs: dict[str, str]) -> list[str]:
    return [
        f"{where}: ...{text[max(0, text.index(SECRET) - 120) : text.index(SECRET) + 40]}..."
        for where, text in outputs.items()
        if SECRET in text
    ]


def serve(project: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    log = (project / "serve.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "mlcycle"), "serve", "--port", str(port)],
        cwd=project,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def test_a_planted_secret_never_leaves_through_any_exit(
    fresh_project: Path, tmp_path: Path
) -> None:
    project = fresh_project
    (tmp_path / "mlflow-server").mkdir()
    service = MlflowService(tmp_path / "mlflow-server").start()
    planted_uri = service.uri.replace("http://", f"http://alice:{SECRET}@")
    env = {
        "MLFLOW_TRACKING_URI": planted_uri,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its records are this test's alone
        "PREFECT_LOGGING_TO_API_ENABLED": "true",  # the run logs, as the Prefect UI shows them
    }
    outputs: dict[str, str] = {}
    try:
        for command in (
            ["run", "--set", f"select.storage={STORAGE}", "--set", "serve.poll_seconds=1"],
            ["models"],
            ["promote", "1"],  # already the champion: refused, and the refusal is scanned too
            ["monitor"],
            ["register"],
        ):
            result = mlcycle(*command, cwd=project, check=False, **env)
            outputs[f"mlcycle {command[0]} (exit {result.returncode})"] = (
                result.stdout + result.stderr
            )
            if command[0] == "run":
                assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        port = free_port()
        process = serve(project, env, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/ready", process, project / "serve.log")
            for path in ("/ready", "/metadata"):
                outputs[f"GET {path} (serving)"] = " ".join(map(str, get(f"{url}{path}")))
            # The registry gone: the watcher's error (MLflow's, naming the URI) is last_error.
            service.stop()
            deadline = time.monotonic() + 60
            while '"last_error":null' in get(f"{url}/ready")[1].replace(" ", ""):
                assert time.monotonic() < deadline, "the watcher never reported the lost server"
                time.sleep(1)
            for path in ("/ready", "/metadata"):
                outputs[f"GET {path} (registry down)"] = " ".join(map(str, get(f"{url}{path}")))
        finally:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
            if service.process is None:
                service.start()
        assert "last_error" in outputs["GET /ready (registry down)"]

        outputs.update(written_files(project))
        outputs["mlflow server"] = "\n".join(mlflow_records(service.uri))
        prefect = prefect_records(project, env)
        assert prefect["logs"] and prefect["artifacts"], "nothing reached Prefect to scan"
        for kind, records in prefect.items():
            outputs[f"Prefect {kind}"] = json.dumps(records)
    finally:
        service.stop()

    # The scan sees what it must: the planted values did reach the commands.
    assert "select.storage" in outputs["mlflow server"]
    assert "alice:***@" in outputs["GET /ready (registry down)"], outputs
    assert not leaks(outputs), "\n".join(leaks(outputs))

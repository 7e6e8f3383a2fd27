"""Helpers of the integration tests: commands run as a user would, a real ``mlflow server``
process, and a project-like workspace whose models are trained for real."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.core.config import Params, RegistryParams
from tasks.core.tracking import tracked_run
from tasks.registry.candidate import Candidate, find_candidate
from tasks.registry.check import check_registered
from tasks.registry.gate import promote_if_better
from tasks.registry.versions import create_version
from tasks.stages.evaluate import run_evaluate
from tasks.stages.train import run_train
from tests.helpers import free_port

BIN = Path(sys.executable).parent


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "mlcycle tests",
    "GIT_AUTHOR_EMAIL": "tests@mlcycle.local",
    "GIT_COMMITTER_NAME": "mlcycle tests",
    "GIT_COMMITTER_EMAIL": "tests@mlcycle.local",
}


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command as a user would, with this venv first on PATH; output kept for asserts."""
    environment = {
        **os.environ,
        **GIT_IDENTITY,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    result = subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def dvc(*args: str, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check, **env)


def mlcycle(*args: str, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "mlcycle"), *args], cwd=cwd, check=check, **env)


_PREFECT_FILTER = """
import asyncio, json, sys, tasks
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        response = await client._client.post(sys.argv[1], json={"limit": 200})
        response.raise_for_status()
        print(json.dumps(response.json()))
asyncio.run(main())
"""


def prefect_filter(cwd: Path, path: str) -> list[dict]:
    """POST a Prefect ``/<kind>/filter`` in this session's Prefect database."""
    import json

    return json.loads(run([sys.executable, "-c", _PREFECT_FILTER, path], cwd=cwd).stdout)


def prefect_artifacts(cwd: Path) -> dict[str, str]:
    """The newest version of each keyed Prefect artifact in this session's Prefect database."""
    latest = {}
    for artifact in sorted(prefect_filter(cwd, "/artifacts/filter"), key=lambda a: a["created"]):
        latest[artifact["key"]] = artifact["data"]
    return latest


def prefect_flow_runs(cwd: Path) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run in this session's Prefect database."""
    names = {flow["id"]: flow["name"] for flow in prefect_filter(cwd, "/flows/filter")}
    return [
        (names[r["flow_id"]], r["state_type"]) for r in prefect_filter(cwd, "/flow_runs/filter")
    ]


class MlflowService:
    """A real ``mlflow server`` process (proxied artifacts in ``root/artifacts``) on a loopback
    port; it can be stopped and started again on the same port and backend store."""

    def __init__(self, root: Path, backend_uri: str | None = None) -> None:
        self.root = root
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowService:
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                self.backend_uri,
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_http(f"{self.uri}/health", self.process, self.root / "server.log")
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"mlflow server did not start: {error}") from None
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)
        self.process = None


@dataclass
class Workspace:
    """A project-like folder (params.yaml, data/processed, artifacts/, a DVC repo) whose
    models are trained for real and tracked on an MLflow server."""

    root: Path
    params: Params
    name: str

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def model_file(self) -> Path:
        return self.root / "artifacts" / "model.pt"

    def train(self, seed: int, epochs: int = 2) -> Candidate:
        """Train, evaluate and finish a run, as `dvc repro` does; the candidate it gives."""
        self.update("train", seed=seed, epochs=epochs)  # params.yaml says what was trained
        params = self.params
        with tracked_run(params, run_name=f"seed-{seed}") as tracker:
            run_train(
                params.train,
                self.processed,
                self.model_file,
                self.root / "artifacts" / "checkpoints",
                self.root / "reports",
                tracker,
            )
            run_evaluate(
                params.evaluate, self.model_file, self.processed, self.root / "reports", tracker
            )
        return find_candidate(tracker.run_id, self.model_file, self.root)

    def register(self, candidate: Candidate, policy: RegistryParams | None = None):
        """The register flow's three steps, without Prefect."""
        policy = policy or self.params.registry
        registered = create_version(candidate, self.name)
        check_registered(registered, policy, self.model_file, self.processed)
        return promote_if_better(candidate, registered, policy, self.processed)

    def write_params(self, **register: object) -> None:
        self.update("registry", **register)

    def update(self, section: str, **values: object) -> None:
        """Change ``params.yaml`` (and ``self.params``) in one section."""
        changed = getattr(self.params, section).model_copy(update=values)
        self.params = self.params.model_copy(update={section: changed})
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params.model_dump(mode="json")))


def make_workspace(root: Path, processed_dir: Path, tiny_params: Params, name: str) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(processed_dir, root / "data" / "processed")
    dvc("init", "--no-scm", "-q", cwd=root)
    workspace = Workspace(root, tiny_params, name)
    workspace.write_params(model_name=name, min_score=0.0, min_improvement=0.0)
    return workspace


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Until ``url`` answers 200; RuntimeError with the log's tail if ``process`` dies first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def corrupt_logged_model(service: MlflowService, model_id: str) -> None:
    """Overwrite the model file a logged model holds on the server: it no longer loads."""
    weights = [
        path
        for path in service.root.rglob("*")
        if model_id in str(path) and path.name == "model.pt" and path.is_file()
    ]
    assert weights, f"no weights file of {model_id} under {service.root}"
    for path in weights:
        path.write_bytes(b"not a torch file")


def copy_project(source: Path, tmp_path: Path) -> Path:
    """A copy of a project folder (git, DVC cache and all) as ``tmp_path/project``."""
    target = tmp_path / "project"
    shutil.copytree(source, target, symlinks=True)
    return target


class PrefectServer:
    """A real ``prefect server start`` on a loopback port with a database of its own, that a
    test can stop and start again (same port, same database)."""

    def __init__(self, root: Path, **server_settings: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None
        self.server_settings = server_settings  # PREFECT_SERVER_* of the server process only

    @property
    def env(self) -> dict[str, str]:
        """What a client of this server needs (its own PREFECT_HOME: no profile of ours)."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.root),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_ENABLED": "true",  # the run logs a test reads back
        }

    def start(self) -> PrefectServer:
        command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        env = {**self.env, "PREFECT_UI_ENABLED": "false", **self.server_settings}
        del env["PREFECT_API_URL"]
        with (self.root / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_http(f"{self.url}/health", self.process, self.root / "server.log")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


class Worker:
    """`mlcycle worker` in the background, in a session of its own; its output in a file."""

    def __init__(self, checkout: Path, server: PrefectServer, log: Path) -> None:
        self.log = log
        with log.open("a") as output:
            self.process = subprocess.Popen(
                [str(BIN / "mlcycle"), "worker"],
                cwd=checkout,
                env={**server.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def serving_champion(mlflow_uri: str, root: Path, name: str) -> Iterator[tuple]:
    """A workspace under ``root`` with champion v1 of ``name`` (a tiny CNN trained on
    synthetic 8x8 digits of 3 classes) and ``mlcycle serve`` running on it: yields
    ``(workspace, url, registration)``. The working directory and the MLflow settings are the
    workspace's until the block ends (the serve process and the registry read them).
    ``name``: a model of its own per caller, since callers share the session's MLflow server."""
    import mlflow

    from tasks.core.config import load_params
    from tasks.core.files import write_raw_dataset
    from tasks.lifecycle.deploy import wait_until_serving
    from tasks.stages.preprocess import run_preprocess
    from tests.helpers import REPO_ROOT, TINY_OVERRIDES, make_places, synthetic_dataset

    params = load_params(REPO_ROOT / "params.yaml", overrides=TINY_OVERRIDES)
    write_raw_dataset(synthetic_dataset(per_class=20), root / "data" / "raw", source="synthetic")
    run_preprocess(
        params.preprocess.model_copy(update={"val_fraction": 0.25, "test_fraction": 0.25}),
        root / "data" / "raw",
        root / "data" / "processed",
        make_places(root / "gx-work"),
    )
    saved = os.getcwd()
    os.chdir(root)
    experiment = f"{name}-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": experiment}
    os.environ.update(env)
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        workspace = make_workspace(root / "ws", root / "data" / "processed", params, name)
        port = free_port()
        # The watcher stays out of the way (an hour): reloads come from /admin/reload.
        workspace.update("serve", port=port, poll_seconds=3600.0, deploy_timeout_s=60.0)
        first = workspace.register(workspace.train(seed=1, epochs=3))
        assert first.promoted
        log = (root / "serve.log").open("w")
        process = subprocess.Popen(
            [str(BIN / "mlcycle"), "serve"],
            cwd=workspace.root,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:  # a deadline, not a speed check: a busy CI machine may take minutes
                wait_until_serving(url, first.version, 240)
            except Exception as error:
                log.flush()
                tail = (root / "serve.log").read_text()[-3000:]
                raise RuntimeError(f"mlcycle serve did not serve: {error}\n{tail}") from None
            yield workspace, url, first
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            log.close()
    finally:
        os.chdir(saved)
        for key in env:
            os.environ.pop(key, None)
        mlflow.set_tracking_uri(None)

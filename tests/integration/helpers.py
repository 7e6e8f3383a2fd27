"""Helpers of the integration tests: commands run as a user would, a real ``mlflow server``
process, and a project-like workspace whose models are trained for real."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml

from tasks.core.config import Params, RegistryParams
from tasks.core.tracking import tracked_run
from tasks.registry.candidate import Candidate, find_candidate
from tasks.registry.gate import Registration
from tasks.stages.evaluate import record_evaluation, run_evaluate
from tasks.stages.train import epoch_logger, record_training, run_train
from tests.helpers import WITHIN_SECONDS, free_port

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


def start_up_seconds(cwd: Path) -> float:
    """How long the CLI takes, on this machine now, to start and refuse a bad override
    (reaching nothing): what a command's own start-up or shut-down adds to the docs' "within
    seconds" under the load of the moment (on 2 busy cores, twice what it is on idle ones)."""
    started = time.monotonic()
    refused = mlcycle("run", "--set", "train.epoch=1", cwd=cwd, check=False)
    assert "train.epoch is not a key" in refused.stderr, refused.stderr[-2000:]
    return time.monotonic() - started


def mlcycle_within_seconds(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`mlcycle *args` (not checked), asserted to end within WITHIN_SECONDS more than the CLI
    takes to start here (``start_up_seconds``): the docs' "within seconds", with the machine's
    load measured rather than guessed."""
    start_up = start_up_seconds(cwd)
    started = time.monotonic()
    result = mlcycle(*args, cwd=cwd, check=False, **env)
    seconds = time.monotonic() - started
    assert seconds < start_up + WITHIN_SECONDS, (
        f"mlcycle {' '.join(args)} took {seconds:.1f} s; starting and refusing took "
        f"{start_up:.1f} s\n{result.stderr[-2000:]}"
    )
    return result


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


class BackgroundCommand:
    """An `mlcycle` command in a process group of its own (as a terminal starts it), its
    output read line by line from a pipe, each line with the time it came."""

    def __init__(self, project: Path, command: list[str], env: dict[str, str]) -> None:
        self.timed: list[tuple[float, str]] = []  # (time.monotonic() when it came, the line)
        self.process = subprocess.Popen(
            [str(BIN / "mlcycle"), *command],
            cwd=project,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.timed.append((time.monotonic(), line.rstrip()))

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.timed]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


class BackgroundRun(BackgroundCommand):
    """`mlcycle run` started as a terminal starts it (a process group of its own), its output
    collected line by line with the time each line came. DVC runs a stage through $SHELL:
    /bin/sh here (dash, as in CI where SHELL is unset) keeps itself as the stage's parent
    instead of exec'ing it, the harder case for a stop, which must end the shell and the stage
    under it."""

    def __init__(self, project: Path, *args: str, **env: str) -> None:
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        shell_env = {**GIT_IDENTITY, "PATH": path, "SHELL": "/bin/sh", **env}
        super().__init__(project, ["run", *args], shell_env)

    def seen_at(self, text: str, timeout_s: float = 240) -> float:
        """When a line holding ``text`` came (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for at, line in list(self.timed):
                if text in line:
                    return at
            if self.process.poll() is not None and not self.reader.is_alive():
                raise AssertionError(f"never saw {text!r}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s} s: {text!r}\n{self.output[-4000:]}")
            time.sleep(0.1)

    def wait_for(self, text: str, timeout_s: float = 240) -> None:
        self.seen_at(text, timeout_s)

    def signal_group(self, signum: int, again_after_s: float | None = None) -> float:
        """Send ``signum`` as a terminal would (the whole foreground group), and once more
        ``again_after_s`` later (an impatient second Ctrl-C); seconds to exit."""
        started = time.monotonic()
        os.killpg(self.process.pid, signum)
        if again_after_s is not None:
            time.sleep(again_after_s)
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
        self.process.wait(timeout=60)
        self.reader.join(10)
        return time.monotonic() - started

    def stop(self) -> int:
        """Ctrl-C as a terminal sends it, unless the run ended already; the exit code."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGINT)
        self.process.wait(timeout=60)
        self.reader.join(10)
        return self.process.returncode


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
            # MLflow 3's job runner (three huey consumers, for its GenAI jobs) is not used by
            # mlcycle: without it a server starts one process, not four, and idles at ~0% CPU.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        log.close()
        try:
            wait_for_http(f"{self.uri}/health", self.process, self.root / "server.log")
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"mlflow server did not start: {error}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
        self.process = None


@dataclass
class Workspace:
    """A project-like folder (params.yaml, data/processed, artifacts/, a DVC repo) whose
    models are trained for real and tracked on an MLflow server, and registered by the
    register flow itself on the Prefect API at ``prefect_url``."""

    root: Path
    params: Params
    name: str
    prefect_url: str

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
                on_epoch=epoch_logger(tracker),
            )
            record_training(tracker, self.model_file, self.processed)
            run_evaluate(params.evaluate, self.model_file, self.processed, self.root / "reports")
            record_evaluation(tracker, self.root / "reports")
        return find_candidate(tracker.run_id, self.model_file, self.root)

    def register(self, candidate: Candidate, policy: RegistryParams | None = None) -> Registration:
        """``candidate``'s run registered by the register flow (flows/registry.py: the
        version, its load-back check and the gate in one transaction, the data push), as
        `mlcycle register --run` runs it; ``policy``: another ``registry`` section than
        params.yaml's. Scores a test set on ``candidate`` (to steer the gate) are logged to its
        run first: the flow reads them from there."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.registry import register_model

        record_scores(candidate)
        params = self.params.model_copy(update={"registry": policy or self.params.registry})
        with temporary_settings({PREFECT_API_URL: self.prefect_url}):
            return register_model(run_id=candidate.run_id, params=params, workspace=self.root)

    def write_params(self, **register: object) -> None:
        self.update("registry", **register)

    def update(self, section: str, **values: object) -> None:
        """Change ``params.yaml`` (and ``self.params``) in one section."""
        changed = getattr(self.params, section).model_copy(update=values)
        self.params = self.params.model_copy(update={section: changed})
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params.model_dump(mode="json")))


def record_scores(candidate: Candidate) -> None:
    """``candidate``'s test scores on its run, where registration reads them (a test may set
    others than its evaluation gave, to steer the gate)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    logged = client.get_run(candidate.run_id).data.metrics
    for name, value in candidate.metrics.items():
        if logged.get(f"test_{name}") != value:
            client.log_metric(candidate.run_id, f"test_{name}", value)


def make_workspace(
    root: Path, processed_dir: Path, tiny_params: Params, name: str, prefect_url: str
) -> Workspace:
    """A Workspace at ``root`` on a copy of ``processed_dir``, registering model ``name``
    (no score floor, no margin) through the Prefect API at ``prefect_url``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(processed_dir, root / "data" / "processed")
    dvc("init", "--no-scm", "-q", cwd=root)
    workspace = Workspace(root, tiny_params, name, prefect_url)
    workspace.write_params(model_name=name, min_score=0.0, min_improvement=0.0)
    return workspace


def stop_process_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process group ``process`` leads (a server started in a session of its
    own), SIGKILL if it has not ended after ``grace_s`` (a loaded machine's uvicorn may not)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15) -> float:
    """Seconds until ``condition`` held; AssertionError naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


class ServedApp(BackgroundCommand):
    """`mlcycle serve` in the background (a session of its own), its output read line by line
    from a pipe (not a file: a write limit set on the process must hit the prediction log
    alone), each line with the time it came. ``port`` None: the project's ``serve.port`` (what
    `mlcycle promote` asks to reload); otherwise passed as ``--port``."""

    def __init__(self, project: Path, *args: str, port: int | None = None) -> None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        self.port = port or int(params["serve"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        flags = ["--port", str(port)] if port else []
        super().__init__(project, ["serve", *flags, *args], {})

    def get(self, path: str) -> dict:
        answer = httpx.get(f"{self.url}{path}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def version(self) -> str:
        return self.get("/metadata")["version"]

    def predict(self, images: np.ndarray, chunk: int = 100) -> list[str]:
        """The prediction ids of ``images``, sent ``chunk`` to a request."""
        ids = []
        for start in range(0, len(images), chunk):
            body = {"images": images[start : start + chunk].tolist()}
            answer = httpx.post(f"{self.url}/predict", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            ids += answer.json()["prediction_ids"]
        return ids

    def feedback(self, prediction_id: str, label: int = 0) -> httpx.Response:
        body = {"prediction_id": prediction_id, "label": label}
        return httpx.post(f"{self.url}/feedback", json=body, timeout=30)


@contextmanager
def serving(
    project: Path, *args: str, port: int | None = None, timeout_s: float = 240
) -> Iterator[ServedApp]:
    """A :class:`ServedApp` once it answers ``/ready``; stopped (SIGTERM) when the block ends."""
    served = ServedApp(project, *args, port=port)
    try:
        wait_for_http(f"{served.url}/ready", served.process, Path(os.devnull), timeout_s)
        yield served
    except RuntimeError as error:
        raise AssertionError(f"{error}\n{served.output}") from None
    finally:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGTERM)
        served.process.wait(timeout=30)


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
    """A copy of a project folder (git, DVC cache and all) as ``tmp_path/project``; its own
    MLflow store (``mlflow.db``) then records the copy's artifact folders, not the source's."""
    target = tmp_path / "project"
    shutil.copytree(source, target, symlinks=True)
    if (target / "mlflow.db").is_file():
        relocate_mlflow_store(target / "mlflow.db", source.resolve(), target.resolve())
    return target


# Where a SQLite MLflow store records the absolute locations of artifacts and model files.
MLFLOW_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def relocate_mlflow_store(store: Path, old: Path, new: Path) -> None:
    """Point the locations ``store`` records under folder ``old`` at the same places under
    ``new`` (a copy of it): the copy's runs and models then load, and change, its own files."""
    import sqlite3

    with closing(sqlite3.connect(store)) as db, db:
        for table, column in MLFLOW_LOCATIONS:
            for before, after in ((f"file://{old}/", f"file://{new}/"), (f"{old}/", f"{new}/")):
                db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, len(before), before),
                )


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
        if self.process is not None:
            stop_process_group(self.process)


class Worker:
    """`mlcycle worker` in the background, in a session of its own; its output in a file.
    ``env``: settings of the worker process (``PREFECT_WORKER_QUERY_SECONDS``: its poll)."""

    def __init__(self, checkout: Path, server: PrefectServer, log: Path, **env: str) -> None:
        self.log = log
        with log.open("a") as output:
            self.process = subprocess.Popen(
                [str(BIN / "mlcycle"), "worker"],
                cwd=checkout,
                env={**server.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env},
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
def serving_champion(mlflow_uri: str, prefect_url: str, root: Path, name: str) -> Iterator[tuple]:
    """A workspace under ``root`` with champion v1 of ``name`` (a tiny CNN trained on
    synthetic 8x8 digits of 3 classes) and ``mlcycle serve`` running on it: yields
    ``(workspace, url, registration)``. The working directory and the MLflow settings are the
    workspace's until the block ends (the serve process and the registry read them).
    ``name``: a model of its own per caller, since callers share the session's MLflow server.
    v1 is registered by the register flow, on the Prefect API at ``prefect_url``."""
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
        workspace = make_workspace(
            root / "ws", root / "data" / "processed", params, name, prefect_url
        )
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

"""Real components for integration tests: git+DVC copies of this repository, an ``mlflow
server`` process on a free loopback port, and the ``mlcycle`` CLI in subprocesses (Prefect's
ephemeral API)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tasks.config import Params, RegistryParams, load_params
from tasks.evaluate import run_evaluate
from tasks.pipeline import apply_params
from tasks.registry import (
    Candidate,
    check_registered,
    create_version,
    find_candidate,
    promote_if_better,
)
from tasks.tracking import tracked_run
from tasks.train import run_train
from tests.conftest import REPO_ROOT, TINY_OVERRIDES, free_port

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


# `prefect artifact ls` (and the client's read_artifacts) send null filters that Prefect
# 3.8.8's own server rejects with 422; posting the filter body ourselves works.
_READ_ARTIFACTS = """
import asyncio, json, tasks
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        response = await client._client.post("/artifacts/filter", json={"limit": 200})
        response.raise_for_status()
        latest = {}
        for artifact in sorted(response.json(), key=lambda a: a["created"]):
            latest[artifact["key"]] = artifact["data"]
        print(json.dumps(latest))
asyncio.run(main())
"""


def prefect_artifacts(cwd: Path) -> dict[str, str]:
    """The newest version of each keyed Prefect artifact in this session's Prefect database."""
    import json

    return json.loads(run([sys.executable, "-c", _READ_ARTIFACTS], cwd=cwd).stdout)


@pytest.fixture(scope="session")
def project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's files (as git would ship them) in a fresh git repo, shrunk params."""
    root = tmp_path_factory.mktemp("template") / "project"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if name == "dvc.lock" or name.startswith("tests/") or not source.is_file():
            continue  # a run's lock file is an output, not part of the project
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name)
    params_file = root / "params.yaml"
    # its own serving port: a deploy step must never talk to an app the developer runs
    overrides = [*TINY_OVERRIDES, f"serve.port={free_port()}"]
    apply_params(load_params(params_file, overrides=overrides), params_file)
    run(["git", "init", "-q"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-qm", "project under test"], cwd=root)
    return root


@pytest.fixture
def fresh_project(project_template: Path, tmp_path: Path) -> Path:
    """A clean clone-like copy of the project, no outputs yet."""
    target = tmp_path / "project"
    shutil.copytree(project_template, target, symlinks=True)
    return target


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
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.root / "server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{log_text}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture(scope="session")
def mlflow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowService]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on a free loopback port."""
    service = MlflowService(tmp_path_factory.mktemp("mlflow-server")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_service: MlflowService) -> str:
    return mlflow_service.uri


def _postgres_tools() -> dict[str, str] | None:
    import glob

    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        tools = {name: shutil.which(name, path=folder) for name in ("initdb", "pg_ctl")}
        if all(tools.values()):
            return tools  # type: ignore[return-value]
    return None


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (Debian's ``postgresql`` package),
    or a skip that says what is missing."""
    import tempfile

    tools = _postgres_tools()
    if tools is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # MLflow's PostgreSQL driver
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    # PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user, in a
    # folder of its own outside pytest's root-only temp tree.
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="mlcycle-postgres-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    try:
        subprocess.run(
            [
                *as_user,
                tools["initdb"],
                "-D",
                str(data),
                "-U",
                "mlflow",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            [
                *as_user,
                tools["pg_ctl"],
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr or error.stdout}") from None
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            [*as_user, tools["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_mlflow_server(
    postgres_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real ``mlflow server`` on the PostgreSQL backend."""
    service = MlflowService(tmp_path_factory.mktemp("mlflow-postgres"), postgres_uri).start()
    yield service.uri
    service.stop()


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
        return find_candidate(tracker.run_id, self.model_file, self.root / "dvc.lock")

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

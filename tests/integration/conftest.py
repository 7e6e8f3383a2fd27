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
from pathlib import Path

import pytest

from tasks.config import load_params
from tasks.pipeline import apply_params
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
    apply_params(load_params(params_file, overrides=TINY_OVERRIDES), params_file)
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)
    yield uri
    os.killpg(process.pid, 15)
    process.wait(timeout=30)
    log.close()

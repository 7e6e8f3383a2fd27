"""Promises of docs/guide/registry.md, watched as the user would: `mlcycle register` and
`mlcycle restore` in clones that ran the pipeline (champion v1), and the registry lock held and
lost by real processes on a real PostgreSQL and a real Prefect server.

- a workspace whose data differs from the data the run was evaluated on is refused by register;
- restore at another commit than the version's prints the `git checkout` to run;
- a process waiting for the registry lock gives up with a clear error after its wait (11
  minutes: tests/unit/test_docs_promises.py checks the default; here a short wait);
- the PostgreSQL and the Prefect locks are freed when their holder dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.core.config import apply_params, load_params
from tests.integration.helpers import copy_project, dvc, mlcycle, run

pytestmark = pytest.mark.slow


@pytest.fixture
def project(ran_project: Path, tmp_path: Path) -> Path:
    return copy_project(ran_project, tmp_path)


def versions(project: Path) -> dict[str, list[str]]:
    """Every version of the model: its aliases."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = client.search_model_versions("name = 'mlcycle-classifier'")
    return {str(v.version): sorted(v.aliases) for v in found}


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `mlcycle: error:` line of a failed command, with no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    [line] = [text for text in result.stderr.splitlines() if text.startswith("mlcycle: error:")]
    return line


def test_register_refuses_a_workspace_whose_data_differs_from_the_runs(project):
    before = versions(project)
    params = project / "params.yaml"
    # DVC alone, as a user would: another split of the same data
    apply_params(load_params(params, overrides=["preprocess.seed=7"]), params)
    dvc("repro", "--single-item", "preprocess", cwd=project)
    refused = error_line(mlcycle("register", cwd=project, check=False))
    assert "data/processed in this workspace (" in refused
    assert "is not the data run" in refused and "was evaluated on (" in refused
    assert versions(project) == before  # nothing registered, no alias moved


def test_restore_at_another_commit_prints_the_git_checkout(project):
    # the ran clone trained v1 at its first commit, then committed the dvc.lock it wrote
    trained_at = run(["git", "rev-parse", "HEAD~1"], cwd=project).stdout.strip()
    elsewhere = mlcycle("restore", "1", cwd=project).stdout
    assert f"trained at git commit {trained_at}; this checkout is elsewhere" in elsewhere
    assert f"`git checkout {trained_at[:12]}` first for the exact code" in elsewhere

    run(["git", "checkout", "-q", "--force", trained_at], cwd=project)
    at_the_commit = mlcycle("restore", "1", cwd=project).stdout
    assert "data, params.yaml and dvc.lock restored" in at_the_commit
    assert "git checkout" not in at_the_commit


# Takes the registry lock (waiting up to argv[2] seconds), says so, holds it argv[3] seconds.
HOLDER = """
import logging, sys, time
import tasks
from tasks.registry.lock import registry_lock
logging.basicConfig(format="%(message)s")
logging.getLogger("mlcycle").setLevel(logging.INFO)  # what mlcycle says, as its commands show it
with registry_lock(sys.argv[1], wait_s=float(sys.argv[2])):
    print("HOLDING", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def holder(name: str, cwd: Path, wait_s: float, hold_s: float, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, str(wait_s), str(hold_s)],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def holding(process: subprocess.Popen) -> None:
    """Until the holder says it holds the lock (its log lines come first); a holder that
    gives up ends its output, and the test with it."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        if line.strip() == "HOLDING":
            return
        seen.append(line)
    raise AssertionError("the holder never held the lock:\n" + "".join(seen)[-3000:])


def test_a_waiter_gives_up_on_a_held_registry_lock_after_its_wait(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = holder("digits", tmp_path, wait_s=10, hold_s=600, **env)
    try:
        holding(first)
        started = time.monotonic()
        waiter = holder("digits", tmp_path, wait_s=3, hold_s=0, **env)
        output = waiter.communicate(timeout=120)[0]
        gave_up_after = time.monotonic() - started
    finally:
        first.kill()
        first.wait()
    assert waiter.returncode != 0 and "HOLDING" not in output
    assert "registry: waiting:" in output  # it said it waits, in its log
    assert "(the registry lock) is held by another process; waited 3 s" in output
    assert 3 <= gave_up_after < 3 + 30, gave_up_after  # the wait, and the interpreter's start


def assert_freed_when_the_holder_dies(cwd: Path, freed_within_s: float, **env: str) -> float:
    """kill -9 of a holder: a waiter gets the lock within ``freed_within_s``; how soon."""
    name = f"digits-{uuid.uuid4().hex[:8]}"
    stuck = holder(name, cwd, wait_s=60, hold_s=600, **env)
    holding(stuck)
    stuck.send_signal(signal.SIGKILL)
    stuck.wait(timeout=30)
    started = time.monotonic()
    waiter = holder(name, cwd, wait_s=freed_within_s, hold_s=0, **env)
    output = waiter.communicate(timeout=freed_within_s + 120)[0]
    assert waiter.returncode == 0 and "HOLDING" in output, output[-3000:]
    return time.monotonic() - started


def test_a_holder_that_dies_frees_the_postgresql_advisory_lock(postgres_uri, tmp_path):
    took = assert_freed_when_the_holder_dies(tmp_path, 30, MLFLOW_TRACKING_URI=postgres_uri)
    print(f"PostgreSQL lock taken {took:.1f} s after its holder died")


def test_a_holder_that_dies_frees_the_prefect_lock(mlflow_server, prefect_server, tmp_path):
    # a holder on this host whose process is gone is taken over at once, not after its lease
    took = assert_freed_when_the_holder_dies(
        tmp_path, 60, MLFLOW_TRACKING_URI=mlflow_server, PREFECT_API_URL=prefect_server
    )
    print(f"Prefect lock taken {took:.1f} s after its holder died")

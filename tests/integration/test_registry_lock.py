"""The registry lock excludes a second process, for each kind of tracking store: a file lock
beside a SQLite store, a PostgreSQL advisory lock, and for an MLflow server a Prefect global
concurrency limit on a Prefect server (or, with none, a machine-wide file lock). A holder that
dies releases it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tasks.registry.lock import lock_file, machine_lock_file

HOLD_S = 1.5
# Takes the lock, notes when it held it, holds it a while; prints READY once inside.
HOLDER = """
import sys, time
import tasks
from tasks.registry.lock import registry_lock
with registry_lock(sys.argv[1], wait_s=120):
    entered = time.time()
    print("READY", flush=True)
    time.sleep(float(sys.argv[2]))
    print(f"HELD {entered} {time.time()}", flush=True)
"""


def holder(name: str, hold_s: float, uri: str, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, str(hold_s)],
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def held_intervals(processes: list[subprocess.Popen]) -> list[tuple[float, float]]:
    intervals = []
    for process in processes:
        output = process.communicate(timeout=240)[0]
        assert process.returncode == 0, output[-3000:]
        line = next(line for line in output.splitlines() if line.startswith("HELD "))
        intervals.append(tuple(float(v) for v in line.split()[1:]))
    return sorted(intervals)


def assert_one_at_a_time(uri: str, cwd: Path, name: str, **env: str) -> None:
    processes = [holder(name, HOLD_S, uri, cwd, **env) for _ in range(2)]
    (first_in, first_out), (second_in, second_out) = held_intervals(processes)
    assert second_in >= first_out, "both processes held the lock at once"
    assert first_out - first_in >= HOLD_S and second_out - second_in >= HOLD_S


@pytest.mark.slow
def test_a_file_lock_beside_a_sqlite_store_lets_one_process_in_at_a_time(tmp_path):
    assert_one_at_a_time(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "digits")
    assert lock_file(f"sqlite:///{tmp_path / 'mlflow.db'}", "digits").parent == tmp_path


@pytest.mark.slow
def test_a_killed_holder_releases_the_file_lock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stuck = holder("digits", 600, uri, tmp_path)
    assert stuck.stdout.readline().strip() == "READY"
    stuck.send_signal(signal.SIGKILL)
    stuck.wait(timeout=30)
    started = time.monotonic()
    assert_one_at_a_time(uri, tmp_path, "digits")
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_a_postgresql_store_uses_an_advisory_lock(postgres_uri, tmp_path):
    assert_one_at_a_time(postgres_uri, tmp_path, "digits")


@pytest.mark.slow
def test_an_mlflow_server_store_uses_a_prefect_concurrency_limit(
    mlflow_server, prefect_server, tmp_path
):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    assert_one_at_a_time(mlflow_server, tmp_path, name, PREFECT_API_URL=prefect_server)
    limits = prefect_limits(prefect_server)
    assert limits[f"mlcycle-registry-{name}"] == (1, 0)  # one slot, free again


@pytest.mark.slow
def test_without_a_prefect_server_an_mlflow_server_store_gets_a_machine_lock(
    mlflow_server, tmp_path, monkeypatch
):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    name = f"digits-{uuid.uuid4().hex[:8]}"
    assert_one_at_a_time(mlflow_server, tmp_path, name)
    assert machine_lock_file(mlflow_server, name).is_file()


def prefect_limits(api_url: str) -> dict[str, tuple[int, int]]:
    """Global concurrency limits on a Prefect server: name -> (limit, active slots)."""
    import httpx

    response = httpx.post(f"{api_url}/v2/concurrency_limits/filter", json={"limit": 200})
    response.raise_for_status()
    return {item["name"]: (item["limit"], item["active_slots"]) for item in response.json()}


def test_lock_files_sit_beside_local_stores_only(tmp_path):
    assert lock_file("sqlite:///mlflow.db", "m") == Path(".m.registry.lock")
    assert lock_file(f"file://{tmp_path}/mlruns", "m") == tmp_path / "mlruns" / ".m.registry.lock"

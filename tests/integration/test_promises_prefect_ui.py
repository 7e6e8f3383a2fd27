"""`make prefect-ui` keeps the promises of docs/guide/troubleshooting.md ("Prefect"): on
another port its UI asks that port's API, its server sends no telemetry (so, offline, logs no
error for it), it keeps the slots' leases on disk, and the classic UI is at the root. The
real target starts a real server."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.integration.helpers import wait_for_http

pytestmark = pytest.mark.slow


def test_make_prefect_ui_on_another_port_points_its_ui_there_and_sends_no_telemetry(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    with log.open("w") as output:
        server = subprocess.Popen(
            # -o install: this checkout's .venv is set up already
            ["make", "-o", "install", "prefect-ui", f"PREFECT_PORT={port}"],
            cwd=REPO_ROOT,
            env={**env, "PREFECT_HOME": str(tmp_path / "home")},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", server, log, timeout_s=180)
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        root = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert root.status_code == 200 and "<html" in root.text.lower()
        assert settings["default_ui"] == "v1"  # the classic UI at the root, not the V2 UI
        # the running server's own settings: no analytics (offline, each try logs an error),
        # leases on disk (a restart forgets no training slot)
        server_settings = httpx.get(f"http://127.0.0.1:{port}/api/admin/settings", timeout=10)
        running = server_settings.json()["server"]
        assert running["analytics_enabled"] is False
        assert running["ui"]["v2_enabled"] is False
        assert running["concurrency"]["lease_storage"].endswith("lease_storage.filesystem")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    output = log.read_text()
    assert "Uvicorn running" in output or "Check out the dashboard" in output, output[-3000:]
    assert "ERROR" not in output, output[-3000:]

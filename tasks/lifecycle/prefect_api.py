"""The Prefect API a command's flows report to: ``PREFECT_API_URL`` when set (a ``prefect
server`` you run), else a temporary ``prefect server start`` of this command's own.

Why not Prefect's built-in temporary server: it runs in the terminal's process group, so a
Ctrl-C killed it before the flow could record that it was stopped, and the command then hung
on a dead API. This one runs in a session of its own (it never sees the terminal's Ctrl-C),
dies with the command (see ``tasks.core.processes``), and is stopped after the flow has
finished recording, however the flow ended. It uses the same database (``PREFECT_HOME``), so
``prefect server start`` shows the runs afterwards.

Its start-up (3 s, 8 s on a new database) is most of a short command's overhead, so a command
can start it first and do its own checks while it comes up (``wait=False``, then
``PrefectApi.ready()`` before the first flow).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tasks.core.errors import MlcycleError
from tasks.core.processes import start_group, stop_group

SERVER_LOG = Path(".mlcycle/prefect-server.log")
START_TIMEOUT_S = 90.0


class PrefectApiError(MlcycleError):
    """The temporary Prefect server did not start."""


@dataclass
class PrefectApi:
    """The API URL flows report to; ``ready()`` returns once it answers."""

    url: str
    _wait: Callable[[], None] = field(default=lambda: None, repr=False)
    answered: bool = False

    def ready(self) -> str:
        if not self.answered:
            self._wait()
            self.answered = True
        return self.url


@contextmanager
def prefect_api(log_path: Path = SERVER_LOG, *, wait: bool = True) -> Iterator[PrefectApi]:
    """The API the flows in this block report to (see the module). ``wait=False``: the block
    starts while the temporary server is still coming up; call ``ready()`` before a flow."""
    if os.environ.get("PREFECT_API_URL"):
        yield PrefectApi(os.environ["PREFECT_API_URL"])
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    with log_path.open("w") as log:
        server = start_group(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            },
        )
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings  # while it starts

        api = PrefectApi(url, lambda: _wait_until_healthy(url, server, log_path))
        if wait:
            api.ready()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield api
            finally:
                if api.answered:  # else nothing reported to it
                    _send_queued_reports()
    finally:
        stop_group(server)


def _send_queued_reports(timeout_s: float = 5.0) -> None:
    """Hand the run logs and events Prefect still queues to the server while it runs: left
    for exit, they would be retried against a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)


def _wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = log_path.read_text()[-1500:] if log_path.is_file() else ""
    raise PrefectApiError(
        f"the temporary Prefect server did not start within {START_TIMEOUT_S:g} s (log: "
        f"{log_path}); set PREFECT_API_URL to a running `prefect server` instead. {tail}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

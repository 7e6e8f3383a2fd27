"""The Prefect API a command's flows report to: ``PREFECT_API_URL`` when set (a ``prefect
server`` you run), else a temporary ``prefect server start`` of this command's own.

Why not Prefect's built-in temporary server: it runs in the terminal's process group, so a
Ctrl-C killed it before the flow could record that it was stopped, and the command then hung
on a dead API. This one runs in a session of its own (it never sees the terminal's Ctrl-C),
dies with the command (see ``tasks.core.processes``), and is stopped after the flow has
finished recording, however the flow ended. It uses the same database (``PREFECT_HOME``), so
``prefect server start`` shows the runs afterwards.

Its start-up (3 s, 8 s on a new database) is most of a short command's overhead, so a command
can start it first and do its own checks while it comes up (``starting_prefect_api``, then
``PrefectApi.ready()`` before the first flow).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tasks.core.errors import MlcycleError
from tasks.core.processes import STOP_GRACE_S, start_group, stop_group

SERVER_LOG = Path(".mlcycle/prefect-server.log")
START_TIMEOUT_S = 90.0
START_POLL_S = 0.2  # how often a starting server is asked for /health
HEALTH_TIMEOUT_S = 2.0  # one /health request while it starts
LOG_TAIL_CHARS = 1500  # of the server's log, in the error when it did not start
DRAIN_TIMEOUT_S = 5.0  # for the run logs and events still queued, per queue
API_CHECK_EVERY_S = 5.0  # how often a watched API is asked for /health
API_LOST_AFTER_S = 15.0  # unanswered this long, it is lost (a restart takes ~5-10 s)
UNWIND_GRACE_S = 10.0  # what a stopped command gets to stop its children before the exit
LOST_SIGNAL = signal.SIGUSR1  # how the watch interrupts the main thread


class PrefectApiError(MlcycleError):
    """The temporary Prefect server did not start, or PREFECT_API_URL's does not answer."""


@dataclass
class PrefectApi:
    """The API URL flows report to; ``ready()`` returns once it answers. ``temporary``: a
    server this command started, which stops with it (no PREFECT_API_URL)."""

    url: str
    _wait: Callable[[], None] = field(default=lambda: None, repr=False)
    answered: bool = False
    temporary: bool = True

    def ready(self) -> str:
        if not self.answered:
            self._wait()
            self.answered = True
        return self.url


@contextmanager
def prefect_api(log_path: Path = SERVER_LOG) -> Iterator[PrefectApi]:
    """The API the flows in this block report to (see the module), once it answers."""
    with starting_prefect_api(log_path) as api:
        api.ready()
        yield api


@contextmanager
def starting_prefect_api(log_path: Path = SERVER_LOG) -> Iterator[PrefectApi]:
    """The API the flows in this block report to (see the module); the block starts while the
    temporary server is still coming up: call ``ready()`` before a flow."""
    if os.environ.get("PREFECT_API_URL"):
        url = os.environ["PREFECT_API_URL"]
        check_answers(url)  # before the imports and the flow: Prefect retries for seconds
        yield PrefectApi(url, answered=True, temporary=False)
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
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield api
            finally:
                if api.answered:  # else nothing reported to it
                    _send_queued_reports()
    finally:
        stop_group(server, grace_s=STOP_GRACE_S)  # a server keeps no records of ours to finish


def check_answers(url: str, timeout_s: float = API_CHECK_EVERY_S) -> None:
    """PrefectApiError naming ``url`` (PREFECT_API_URL) unless a server answers at its /health.

    Any answer but 404 counts: an API behind a login (Prefect Cloud, a proxy) answers 401
    here, where this request carries no key, and Prefect's own client then sends one."""
    try:
        answer = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
    except httpx.TransportError as error:
        raise PrefectApiError(
            f"PREFECT_API_URL {url}: the Prefect API does not answer "
            f"({str(error) or type(error).__name__}); start the server there (`prefect server "
            "start`), or unset PREFECT_API_URL to run with a temporary one"
        ) from None
    if answer.status_code == 404:
        raise PrefectApiError(
            f"PREFECT_API_URL {url}: a server answers, but no Prefect API is there (GET "
            "/health: 404); a local server's API URL ends in /api, e.g. "
            "http://127.0.0.1:4200/api"
        )


def _send_queued_reports(timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Hand the run logs and events Prefect still queues to the server while it runs: left
    for exit, they would be retried against a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=timeout_s)

    # From a thread running an event loop, drain_all returns a coroutine instead of waiting
    # (and nothing awaits it): a thread of its own has no loop, so the wait always happens.
    drainer = threading.Thread(target=drain, name="mlcycle-send-reports")
    drainer.start()
    drainer.join()


def _wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(START_POLL_S)
    tail = log_path.read_text()[-LOG_TAIL_CHARS:] if log_path.is_file() else ""
    raise PrefectApiError(
        f"the temporary Prefect server did not start within {START_TIMEOUT_S:g} s (log: "
        f"{log_path}); set PREFECT_API_URL to a running `prefect server` instead. {tail}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectApiLost(BaseException):
    """The watched Prefect API stopped answering: raised in the thread that watches it, a
    BaseException (as ``Terminated``) so that no ``except Exception`` swallows it. The watch
    has reported it (see :func:`watching_api`)."""


class ApiWatch:
    """A daemon thread that asks ``url`` for /health every API_CHECK_EVERY_S. Once it has not
    answered for API_LOST_AFTER_S: PrefectApiLost in the watched thread, which stops what it
    runs (its children in order); then one report (``settle`` says what the outage cost, in
    words, and marks it), by the watched thread if it unwinds, else by the watch after
    UNWIND_GRACE_S, which then ends the process: Prefect itself retries a dead API for a
    minute per call."""

    current: ApiWatch | None = None  # one per process: nested watches are that one
    lost_message: str | None = None  # what was reported, once an API was lost

    def __init__(
        self, url: str, settle: Callable[[str], str], report: Callable[[str], None]
    ) -> None:
        self.url = url
        self.settle = settle
        self.report = report
        self.why: str | None = None
        self._watched = threading.current_thread()
        self._exited = threading.Event()
        self._signal_lock = threading.Lock()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prefect-api-watch")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failing_since: float | None = None
        error = ""
        while not self._exited.wait(API_CHECK_EVERY_S):
            try:
                response = httpx.get(f"{self.url.rstrip('/')}/health", timeout=API_CHECK_EVERY_S)
                response.raise_for_status()
                failing_since = None
                continue
            except httpx.HTTPError as failure:
                error = str(failure) or type(failure).__name__
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since >= API_LOST_AFTER_S:
                break
        else:
            return
        with self._signal_lock:  # never after the block's exit restored the signal's default
            if self._exited.is_set():
                return
            self.why = f"the Prefect API at {self.url} stopped answering ({error})"
            self._interrupt()
        if self._exited.wait(UNWIND_GRACE_S):
            return  # the watched thread reported it on its way out
        self.report_once()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _interrupt(self) -> None:
        if self._watched is threading.main_thread():
            signal.pthread_kill(self._watched.ident, LOST_SIGNAL)
        elif self._watched.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._watched.ident), ctypes.py_object(PrefectApiLost)
            )

    def report_once(self) -> None:
        with self._lock:
            if ApiWatch.lost_message is not None:
                return
            why = self.why or f"the Prefect API at {self.url} stopped answering"
            try:
                settled = self.settle(why)
            except Exception as error:  # the report must still come
                settled = f"the MLflow run could not be marked ({error})"
            ApiWatch.lost_message = f"{why}: {settled}"
            self.report(ApiWatch.lost_message)


def _raise_lost(signum: int, frame: object) -> None:
    raise PrefectApiLost()


@contextmanager
def watching_api(
    url: str, settle: Callable[[str], str], report: Callable[[str], None]
) -> Iterator[None]:
    """Watch the Prefect API at ``url`` for the block (see :class:`ApiWatch`): if it goes away,
    the block ends with PrefectApiLost within a minute, after ``report`` got one line saying
    what was lost (``settle(why)``). Inside a watched block, this is that watch."""
    if ApiWatch.current is not None:
        yield
        return
    watch = ApiWatch(url, settle, report)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(LOST_SIGNAL, _raise_lost) if main else None
    ApiWatch.current = watch
    watch.start()
    try:
        yield
    except PrefectApiLost:
        watch.report_once()
        raise
    finally:
        with watch._signal_lock:
            watch._exited.set()
        ApiWatch.current = None
        if main:
            signal.signal(LOST_SIGNAL, previous)


def api_lost() -> bool:
    """Whether this process lost a watched Prefect API (its exit skips Prefect's handlers,
    which would retry the dead API for minutes)."""
    return ApiWatch.lost_message is not None

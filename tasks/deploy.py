"""deploy: after a promotion, make the serving app serve the new champion, and prove it.

Tells the running app (``mlcycle serve``) to reload, or starts one when ``serve.start_on_deploy``
says so, then waits until ``/ready`` reports the new version; fails after
``serve.deploy_timeout_s``. With no promotion there is nothing to deploy, and it says so.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tasks.config import MlcycleError, ServeParams, run_logger
from tasks.registry import Registration

log = logging.getLogger("mlcycle.deploy")

SERVER_LOG = Path("data/serving/server.log")


class DeployError(MlcycleError):
    """The serving app did not come to serve the promoted version in time."""


@dataclass(frozen=True)
class Deployment:
    action: str  # none | reloaded | started | not-running
    version: str | None  # the version the app serves afterwards, when known
    url: str
    message: str
    pid: int | None = None  # the app this step started, if it started one


def app_url(params: ServeParams) -> str:
    host = "127.0.0.1" if params.host in ("0.0.0.0", "::", "localhost") else params.host
    return f"http://{host}:{params.port}"


def _call(url: str, method: str = "GET", timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def app_is_running(url: str) -> bool:
    try:
        return _call(f"{url}/health", timeout=2.0)[0] == 200
    except (OSError, ValueError):
        return False


def request_reload(url: str) -> bool:
    """Ask a running app to load the version its alias now points at; False if none runs."""
    if not app_is_running(url):
        return False
    try:
        status, body = _call(f"{url}/admin/reload", method="POST")
    except (OSError, ValueError) as error:
        raise DeployError(f"{url}/admin/reload failed: {error}") from None
    if status != 202:
        raise DeployError(f"{url}/admin/reload answered {status}: {body.get('detail', body)}")
    return True


def start_app(log_path: Path = SERVER_LOG) -> subprocess.Popen:
    """``mlcycle serve`` in the background (its own session: it outlives the flow)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_serving(
    url: str, version: str, timeout_s: float, started: subprocess.Popen | None = None
) -> None:
    """Until ``/ready`` reports ``version``; a DeployError after ``timeout_s``, or as soon as
    an app this step ``started`` exits (its log says why)."""
    deadline = time.monotonic() + timeout_s
    last: Any = "no answer"
    while time.monotonic() < deadline:
        if started is not None and started.poll() is not None:
            raise DeployError(
                f"the serving app this step started exited with {started.returncode}; "
                f"see {SERVER_LOG}"
            )
        try:
            status, body = _call(f"{url}/ready")
            last = body
            if status == 200 and body.get("version") == version:
                return
        except (OSError, ValueError) as error:
            last = str(error)
        time.sleep(0.5)
    raise DeployError(
        f"the serving app at {url} did not serve version {version} within {timeout_s:g} s "
        f"(last /ready: {last})"
    )


def deploy(registration: Registration, params: ServeParams) -> Deployment:
    url = app_url(params)
    if not registration.promoted:
        serving = f"v{registration.champion}" if registration.champion else "no model"
        return Deployment(
            "none",
            registration.champion,
            url,
            f"no promotion: nothing to deploy (the champion stays {serving})",
        )
    version = registration.version
    started = None
    if request_reload(url):
        action = "reloaded"
    elif params.start_on_deploy:
        started = start_app()
        action = "started"
    else:
        return Deployment(
            "not-running",
            None,
            url,
            f"no serving app at {url}; `mlcycle serve` (or `make serve`) will serve "
            f"v{version} when started",
        )
    try:
        wait_until_serving(url, version, params.deploy_timeout_s, started)
    except DeployError:
        if started is not None and started.poll() is None:
            started.terminate()  # not left running half-ready behind a failed flow
        raise
    pid = started.pid if started is not None else None
    return Deployment(action, version, url, f"{url} serves v{version} ({action})", pid)


@task(name="deploy")
def deploy_task(registration: Registration, params: ServeParams) -> Deployment:
    deployment = deploy(registration, params)
    run_logger(log.name).info("deploy: %s", deployment.message)
    return deployment

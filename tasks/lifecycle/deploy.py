"""deploy: after a promotion, make the serving app serve the new champion, and prove it.

Tells the running app (``mlcycle serve``) to reload, or starts one when ``serve.start_on_deploy``
says so, then waits until ``/ready`` reports the new version; fails after
``serve.deploy_timeout_s``. With no promotion there is nothing to deploy
(:func:`nothing_to_deploy`), and it says so.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from prefect import task

from tasks.core.config import ServeParams
from tasks.core.console import run_logger
from tasks.core.errors import MlcycleError
from tasks.core.paths import SERVING_DIR

SERVER_LOG = SERVING_DIR / "server.log"
# The serving room's own entry point, run as a process (not imported: deploy only talks HTTP).
SERVE_COMMAND = (sys.executable, "-m", "tasks.serving")
POLL_S = 0.5
HEALTH_TIMEOUT_S = 2.0  # an app that does not answer /health this fast is taken for none
REQUEST_TIMEOUT_S = 3.0  # /admin/reload and each /ready poll
SHOWN_BODY_CHARS = 200  # of an answer that is not the JSON expected, quoted in errors
RELOAD_RETRIES = 2  # a reload request the network dropped is sent again this many times
RELOAD_RETRY_DELAY_S = 2


class DeployError(MlcycleError):
    """The serving app did not come to serve the promoted version in time."""


class ReloadDropped(DeployError):
    """The network dropped the reload request: worth another try (the deploy task retries)."""


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


def _get_json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:SHOWN_BODY_CHARS]}
    return body if isinstance(body, dict) else {"detail": body}


def app_is_running(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S).status_code == HTTPStatus.OK
    except httpx.HTTPError:
        return False


def request_reload(url: str) -> bool:
    """Ask a running app to load the version its alias now points at; False if none runs."""
    if not app_is_running(url):
        return False
    try:
        response = httpx.post(f"{url}/admin/reload", timeout=REQUEST_TIMEOUT_S)
    except httpx.TransportError as error:
        raise ReloadDropped(f"{url}/admin/reload failed: {error}") from None
    if response.status_code != HTTPStatus.ACCEPTED:
        detail = _get_json(response).get("detail", response.text[:SHOWN_BODY_CHARS])
        raise DeployError(f"{url}/admin/reload answered {response.status_code}: {detail}")
    return True


def start_app(log_path: Path = SERVER_LOG) -> subprocess.Popen:
    """``python -m tasks.serving`` in the background (its own session: it outlives the flow)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as output:
        return subprocess.Popen(
            SERVE_COMMAND, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_serving(
    url: str, version: str, timeout_s: float, started: subprocess.Popen | None = None
) -> None:
    """Until ``/ready`` reports ``version``; a DeployError after ``timeout_s``, or as soon as
    an app this step ``started`` exits (its log says why).

    A loop, not retries: this waits for the app to change state (finish loading), and a
    refused connection is expected while an app this step started is still coming up."""
    deadline = time.monotonic() + timeout_s
    last: Any = "no answer"
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            if started is not None and started.poll() is not None:
                raise DeployError(
                    f"the serving app this step started exited with {started.returncode}; "
                    f"see {SERVER_LOG}"
                )
            try:
                response = client.get(f"{url}/ready")
                last = _get_json(response)
                if response.status_code == HTTPStatus.OK and last.get("version") == version:
                    return
            except httpx.HTTPError as error:
                last = str(error) or type(error).__name__
            time.sleep(POLL_S)
    raise DeployError(
        f"the serving app at {url} did not serve version {version} within {timeout_s:g} s "
        f"(last /ready: {last})"
    )


def nothing_to_deploy(champion: str | None, params: ServeParams) -> Deployment:
    """What a registration without a promotion deploys: nothing; ``champion`` (the version
    serving as champion, None when there is none) stays."""
    serving = f"v{champion}" if champion else "no model"
    return Deployment(
        "none",
        champion,
        app_url(params),
        f"no promotion: nothing to deploy (the champion stays {serving})",
    )


def deploy(version: str, params: ServeParams) -> Deployment:
    """Make the serving app serve ``version``, which the registry just promoted: reload the
    running app, or start one (``serve.start_on_deploy``), and wait for ``/ready`` to say so."""
    url = app_url(params)
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


def _reload_dropped(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a reload the network dropped; a timeout or an app that exited stands."""
    return isinstance(state.result(raise_on_failure=False), ReloadDropped)


@task(
    name="deploy",
    retries=RELOAD_RETRIES,
    retry_delay_seconds=RELOAD_RETRY_DELAY_S,
    retry_condition_fn=_reload_dropped,
)
def deploy_task(version: str, params: ServeParams) -> Deployment:
    return _logged(deploy(version, params))


# The same step's name in the flow run: the pipeline always shows what its deploy step did.
@task(name="deploy")
def nothing_to_deploy_task(champion: str | None, params: ServeParams) -> Deployment:
    return _logged(nothing_to_deploy(champion, params))


def _logged(deployment: Deployment) -> Deployment:
    run_logger("mlcycle.deploy").info("deploy: %s", deployment.message)
    return deployment

"""Prefect deployments of mlcycle's flows: the work pool, ``prefect.yaml`` applied with the
values of ``params.yaml``, and what a worker needs to run them in this checkout.

``prefect.yaml`` declares the deployments (``training-pipeline/scheduled``,
``monitoring/hourly``); its ``{{ MLCYCLE_* }}`` placeholders are filled from ``schedule.*`` here,
so ``params.yaml`` stays the single source of the crons, time zone and pool. Everything lives in
the Prefect server's database: schedules survive restarts of the server and of the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.core.config import Params, ScheduleParams
from tasks.core.console import run_logger
from tasks.core.errors import MlcycleError
from tasks.core.slots import SLOT_LEASE_S, ensure_slot, read_holder

TRAINING_FLOW = "training-pipeline"
TRAINING_DEPLOYMENT = f"{TRAINING_FLOW}/scheduled"
DRIFT_EVENT = "mlcycle.monitor.drift"  # what the training deployment's trigger expects
# The server's scheduler creates each active schedule's next runs every 60 s
# (PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS): after this long, none is a fault.
SCHEDULER_GRACE_S = 90
SERVER_CHECK_TIMEOUT_S = 10.0  # the server's /health before anything is applied
ERROR_TAIL_LINES = 15  # of a failed `prefect` command's output, in its error
RUNS_READ = 50  # flow runs read per question: the upcoming ones, the trigger's
MONITORING_DEPLOYMENT = "monitoring/hourly"
PREFECT_FILE = Path("prefect.yaml")


class DeploymentError(MlcycleError):
    """No Prefect server to deploy to, or Prefect refused the deployments."""


@dataclass(frozen=True)
class AppliedDeployment:
    name: str
    cron: str
    timezone: str
    next_runs: tuple[str, ...]  # ISO times of the next scheduled runs


def server_url() -> str:
    """The Prefect server deployments live on: ``PREFECT_API_URL``, which must be set."""
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        raise DeploymentError(
            "deployments live on a Prefect server, and PREFECT_API_URL is not set: start one "
            "(`make prefect-ui`), then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return url


def drift_window_s(params: Params) -> int:
    """The drift trigger's window in whole seconds: ``monitor.cooldown_hours``."""
    return round(timedelta(hours=params.monitor.cooldown_hours).total_seconds())


def retrain_delay_s(params: Params) -> int:
    """How long after the drift event its training starts, in whole seconds."""
    return round(timedelta(minutes=params.monitor.retrain_delay_minutes).total_seconds())


def placeholder_values(params: Params, checkout: Path) -> dict[str, str]:
    """The ``{{ MLCYCLE_* }}`` values of prefect.yaml."""
    schedule = params.schedule
    return {
        "MLCYCLE_CHECKOUT": str(checkout.resolve()),
        "MLCYCLE_WORK_POOL": schedule.work_pool,
        "MLCYCLE_RETRAIN_CRON": schedule.retrain_cron,
        "MLCYCLE_MONITOR_CRON": schedule.monitor_cron,
        "MLCYCLE_TIMEZONE": schedule.timezone,
        "MLCYCLE_RETRAIN_ON_DRIFT": str(params.monitor.retrain_on_drift).lower(),
        "MLCYCLE_DRIFT_COOLDOWN_S": str(drift_window_s(params)),
        "MLCYCLE_RETRAIN_DELAY_S": str(retrain_delay_s(params)),
    }


def _prefect(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """A Prefect CLI command: its output, or DeploymentError with the output's tail."""
    command = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args]
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-ERROR_TAIL_LINES:])
        raise DeploymentError(f"`prefect {' '.join(args)}` failed:\n{tail}")
    return output


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool ``name`` unless it exists; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pool = None
    if pool is not None:
        if pool.type != "process":
            raise DeploymentError(
                f"work pool '{name}' exists with type '{pool.type}'; mlcycle's worker runs flows "
                "as local processes: choose another schedule.work_pool or delete that pool"
            )
        return False
    _prefect("work-pool", "create", name, "--type", "process")
    return True


def apply_deployments(params: Params, checkout: Path = Path(".")) -> list[AppliedDeployment]:
    """:func:`register_deployments`, with an unreachable or failing server as one clear error."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    url = server_url()
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_S).raise_for_status()
        for problem in scheduler_problems():  # before the update resets what it reads
            run_logger("mlcycle.deployments").warning("warning: %s", problem)
        return register_deployments(params, checkout)
    except (httpx.HTTPError, PrefectHTTPStatusError) as error:
        raise DeploymentError(
            f"the Prefect server at {server_url()} failed or cannot be reached ({error}); is it "
            "running (`make prefect-ui`)?"
        ) from None


def register_deployments(params: Params, checkout: Path = Path(".")) -> list[AppliedDeployment]:
    """Create the work pool and training slot when missing, then (re)register every deployment
    of prefect.yaml with the values of ``params``; the training deployment's parameter form is
    ``params`` (every section, as the UI shows it). Re-running updates them in place."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    server_url()
    log = run_logger("mlcycle.deployments")
    if not (checkout / PREFECT_FILE).is_file():
        raise DeploymentError(f"{checkout / PREFECT_FILE}: not found; run from the repository root")
    if ensure_work_pool(params.schedule.work_pool):
        log.info("deployments: created the process work pool '%s'", params.schedule.work_pool)
    ensure_slot(params.schedule.training_slot)
    _prefect(
        "deploy",
        "--all",
        cwd=checkout,
        env=placeholder_values(params, checkout),
    )
    # `prefect deploy` fills placeholders in the deployments but stores the pull step as
    # written (a worker would fill it from its own environment): point it at this checkout.
    pull = [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(checkout.resolve())}}
    ]
    with get_client(sync_client=True) as client:
        for name in (TRAINING_DEPLOYMENT, MONITORING_DEPLOYMENT):
            update = {"pull_steps": pull}
            if name == TRAINING_DEPLOYMENT:
                update["parameters"] = {"params": params.model_dump(mode="json")}
            deployment = client.read_deployment_by_name(name)
            client.update_deployment(deployment.id, DeploymentUpdate(**update))
    check_drift_trigger(params)
    return [describe_deployment(name) for name in (TRAINING_DEPLOYMENT, MONITORING_DEPLOYMENT)]


def check_drift_trigger(params: Params) -> None:
    """Read back the drift trigger ``prefect deploy`` made of prefect.yaml: an automation on the
    training deployment expecting ``mlcycle.monitor.drift`` within ``monitor.cooldown_hours``,
    enabled as ``monitor.retrain_on_drift`` says, starting the run ``monitor.retrain_delay_minutes``
    after the event. DeploymentError naming what is wrong."""
    found = drift_triggers()
    wanted = drift_window_s(params)
    problem = None
    if len(found) != 1:
        problem = f"{len(found)} automations on it expect {DRIFT_EVENT}, expected 1"
    elif found[0].enabled != params.monitor.retrain_on_drift:
        problem = f"its automation '{found[0].name}' is enabled={found[0].enabled}"
    elif round(found[0].trigger.within.total_seconds()) != wanted:
        problem = f"its automation waits {found[0].trigger.within} between runs, not {wanted} s"
    elif (delay := scheduled_after_s(found[0])) != retrain_delay_s(params):
        problem = (
            f"its automation starts the training {delay} s after the event, not "
            f"{retrain_delay_s(params)} s"
        )
    if problem:
        raise DeploymentError(
            f"the drift trigger of {TRAINING_DEPLOYMENT} (prefect.yaml `triggers:`) was not "
            f"created as params.yaml says: {problem}; check prefect.yaml and run "
            "`mlcycle deployments apply` again"
        )


def scheduler_problems(now: datetime | None = None) -> list[str]:
    """A line for each deployed mlcycle deployment whose active schedule the server's scheduler
    has ignored: unchanged for over SCHEDULER_GRACE_S, yet no run created by the scheduler
    since. A healthy scheduler fills each schedule's next runs every loop (60 s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    now = now or datetime.now(UTC)
    problems = []
    with get_client(sync_client=True) as client:
        for name in (TRAINING_DEPLOYMENT, MONITORING_DEPLOYMENT):
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue  # not deployed yet: nothing to judge
            changed = deployment.updated or deployment.created
            if not any(s.active for s in deployment.schedules) or deployment.paused:
                continue
            if changed is None or (now - changed).total_seconds() < SCHEDULER_GRACE_S:
                continue
            runs = _runs_of(
                client,
                deployment.id,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # the upcoming ones first
                limit=RUNS_READ,
            )
            if not any(run.auto_scheduled and run.created >= changed for run in runs):
                problems.append(
                    f"the Prefect server's scheduler has created no run of {name} since its "
                    f"schedule was applied at {changed:%Y-%m-%d %H:%M:%S} UTC: its schedules "
                    "never fire. Look for ERROR lines in the server's log (Prefect 3.8.8's "
                    "scheduler needs SQLAlchemy < 2.1; the scheduler service may be disabled)"
                )
    return problems


def scheduled_after_s(automation: Any) -> int | None:
    """Seconds after the event that an automation's run-deployment action schedules its run
    (None: it has no such action)."""
    for action in automation.actions:
        if action.type == "run-deployment":
            return round(action.schedule_after.total_seconds())
    return None


# The verdict event's resource label that says whether a retraining is already on its way:
# the drift trigger matches only events labelled "false".
RETRAIN_PENDING_LABEL = "mlcycle.retrain-pending"


def pending_retrain(training_slot: str) -> str | None:
    """A training that will learn from the newest labels, in words: the holder of the
    training slot while its lease is alive (a training that died stops counting within
    SLOT_LEASE_S), or a run of the training deployment the drift trigger scheduled (its start
    delayed by ``monitor.retrain_delay_minutes``); None when there is none.

    Prefect's ``within`` debounces per fixed period of the trigger, not per episode: a drift
    event just after a period's end fires again while the first retraining is still on its
    way. The monitor labels such events, and the trigger ignores them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        holder = read_holder(client, training_slot)
        if holder is not None and time.time() - holder.renewed < SLOT_LEASE_S:
            return f"the training slot's holder, {holder.describe()}"
        try:
            deployment = client.read_deployment_by_name(TRAINING_DEPLOYMENT)
        except ObjectNotFound:
            return None
        runs = _runs_of(
            client, deployment.id, [StateType.SCHEDULED, StateType.PENDING], limit=RUNS_READ
        )
    for run in runs:  # the cron's next runs are Scheduled too: only the trigger's count
        if run.created_by is not None and run.created_by.type == "AUTOMATION":
            return f"flow run '{run.name}' of {TRAINING_DEPLOYMENT}, {run.state_name}"
    return None


def _runs_of(client: Any, deployment_id: Any, states: list | None = None, **options: Any) -> list:
    """Flow runs of one deployment, in ``states`` (state types) when given; ``options`` go to
    ``read_flow_runs`` (sort, limit)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=None
        if states is None
        else FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
        **options,
    )


def drift_triggers() -> list:
    """The automations on the training deployment that expect the drift event
    (ObjectNotFound when the deployment is not on the server)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(TRAINING_DEPLOYMENT)
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}"
        )
    return [a for a in automations if DRIFT_EVENT in set(getattr(a.trigger, "expect", ()) or ())]


def describe_deployment(name: str, upcoming: int = 3) -> AppliedDeployment:
    """A deployment's schedule as the server holds it, with its next scheduled runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        schedule = deployment.schedules[0].schedule if deployment.schedules else None
        runs = _runs_of(
            client,
            deployment.id,
            [StateType.SCHEDULED],
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=upcoming,
        )
    return AppliedDeployment(
        name=name,
        cron=getattr(schedule, "cron", "-"),
        timezone=getattr(schedule, "timezone", None) or "-",
        next_runs=tuple(run.expected_start_time.isoformat() for run in runs),
    )


def worker_command(schedule: ScheduleParams) -> list[str]:
    """``prefect worker start`` on the pool, running flows as processes of this checkout."""
    prefect = str(Path(sys.executable).parent / "prefect")
    return [prefect, "worker", "start", "--pool", schedule.work_pool, "--type", "process"]

"""What each ``mlcycle`` command does: one handler per command, ``handler(args) -> exit code``,
named by the parser (``set_defaults(func=...)``). Wiring only: the flows and tasks do the work.

The flow commands start the temporary Prefect API first and make their checks and heavy
imports while it comes up (see ``tasks.lifecycle.prefect_api``): its start-up is most of a short
run's overhead. Params are read before it: a bad override is refused at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from flows.cli.formatting import (
    SHORT_ID,
    format_monitoring,
    format_outcome,
    format_registration,
    format_versions,
)
from flows.cli.session import (
    flow_run_link,
    holding_workspace,
    settle_pipeline,
    settle_registration,
    starting_flow_api,
    watching,
)
from tasks.core.config import Params, ServeParams, load_params
from tasks.core.errors import MlcycleError
from tasks.core.paths import PREDICTION_LOG
from tasks.core.tracking import connect


def run_pipeline(args: argparse.Namespace) -> int:
    """``mlcycle run``: the training-pipeline flow. Bad overrides, params this machine cannot
    run and an unreachable tracking server fail here, before anything is written."""
    params = load_params(overrides=args.overrides)
    with starting_flow_api() as api:
        from tasks.lifecycle.preflight import check_run

        check_run(params)
        connect()
        from flows.training import training_pipeline

        with holding_workspace(args.command_line):
            started_ms = int(time.time() * 1000)
            with watching(api.ready(), settle_pipeline(started_ms)):
                outcome = training_pipeline(params=params)
    flow_run = flow_run_link(outcome.flow_run_id, api.temporary)
    print(format_outcome(outcome, flow_run, api.temporary))
    return 0


def run_register(args: argparse.Namespace) -> int:
    params = load_params()
    with starting_flow_api() as api:
        connect()
        from flows.registry import register_model

        with holding_workspace(args.command_line), watching(api.ready(), settle_registration):
            registration = register_model(run_id=args.run_id, params=params)
    print(format_registration(registration))
    return 0


def run_monitor(args: argparse.Namespace) -> int:
    params = load_params()
    batch, prediction_log = args.batch, args.prediction_log
    if batch is not None and not batch.is_file():
        raise MlcycleError(f"{batch}: no such file (--batch wants an .npz with `images`)")
    with starting_flow_api() as api:
        connect()
        from flows.monitoring import monitoring

        api.ready()
        outcome = monitoring(
            window=args.window,
            batch=str(batch) if batch else None,
            params=params,
            prediction_log=str(prediction_log) if prediction_log else None,
        )
    print(format_monitoring(outcome))
    return outcome.monitored.exit_code


def apply_deployments(args: argparse.Namespace) -> int:
    from tasks.lifecycle.deployments import apply_deployments, server_url

    params = load_params()
    applied = apply_deployments(params)
    print(f"Deployments on {server_url()} (work pool '{params.schedule.work_pool}'):")
    for deployment in applied:
        upcoming = ", ".join(deployment.next_runs) or "the server schedules them within a minute"
        print(
            f"  {deployment.name:<30} cron '{deployment.cron}' ({deployment.timezone}); next: "
            f"{upcoming}"
        )
    print(
        "Start a worker to run them: `make worker` (or `mlcycle worker`); trigger one now from "
        f"the UI or with `prefect deployment run {applied[0].name}`."
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from tasks.lifecycle.deployments import server_url, worker_command

    server_url()
    command = worker_command(load_params().schedule)
    print(f"mlcycle: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)  # the worker owns the terminal (Ctrl-C stops it)


def run_select_worker(args: argparse.Namespace) -> int:
    from tasks.core.console import configure_logging
    from tasks.stages.select import run_worker as run_trials

    configure_logging()
    finished = run_trials(load_params())
    print(f"mlcycle: the study holds {finished} finished trials")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from tasks.core.console import configure_logging
    from tasks.serving.app import serve

    params = load_params()
    configure_logging()
    connect()
    prediction_log = args.prediction_log or PREDICTION_LOG
    serve(params.serve, params.registry.model_name, args.host, args.port, prediction_log)
    return 0


def model_name(args: argparse.Namespace, params: Params) -> str:
    """``--name``, else ``registry.model_name``."""
    return args.name or params.registry.model_name


def list_models(args: argparse.Namespace) -> int:
    from tasks.registry.versions import list_versions

    name = model_name(args, load_params())
    print(format_versions(name, list_versions(name)))
    return 0


def promote(args: argparse.Namespace) -> int:
    # The API first: an unreachable PREFECT_API_URL fails before params.yaml's validation,
    # MLflow and Prefect load (seconds); they load while a temporary server comes up.
    with starting_flow_api() as api:
        params = load_params()
        name = model_name(args, params)
        connect()
        from flows.registry import promote_model

        api.ready()
        previous = promote_model(name, args.version, params.registry, args.force)
    print(f"{name}: champion is now version {args.version} (was {previous or 'none'})")
    print(notify_serving_app(params.serve))
    return 0


def rollback(args: argparse.Namespace) -> int:
    with starting_flow_api() as api:  # the API first, as promote
        params = load_params()
        name = model_name(args, params)
        connect()
        from flows.registry import rollback_model

        api.ready()
        current, previous = rollback_model(name, params.registry)
    print(f"{name}: champion rolled back from version {current} to version {previous}")
    print(notify_serving_app(params.serve))
    return 0


def restore_version(args: argparse.Namespace) -> int:
    from tasks.registry.restore import restore

    name = model_name(args, load_params())
    with holding_workspace(args.command_line):
        restored = restore(name, args.version)
    print(f"{name} v{restored.version}: data, params.yaml and dvc.lock restored")
    for path, md5 in restored.hashes.items():
        print(f"  {path}: {md5} (verified)")
    if not restored.commit_matches:
        print(
            f"  note: trained at git commit {restored.commit}; this checkout is elsewhere. "
            f"`git checkout {restored.commit[:SHORT_ID]}` first for the exact code."
        )
    print("  retrain it: dvc repro --force --single-item train && dvc repro evaluate")
    return 0


def notify_serving_app(serve: ServeParams) -> str:
    """A promotion already happened: a serving app that cannot be told is a warning only."""
    from tasks.lifecycle.deploy import DeployError, app_url, request_reload

    url = app_url(serve)
    try:
        reloading = request_reload(url)
    except DeployError as error:
        return f"  warning: {error}; the app follows the alias within serve.poll_seconds"
    if reloading:
        return f"  the serving app at {url} is reloading (GET {url}/metadata shows the version)"
    return f"  no serving app at {url}; a running one follows the alias within serve.poll_seconds"

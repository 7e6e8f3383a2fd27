"""``mlcycle``'s arguments: one small builder per group of commands, each command naming its
handler in :mod:`flows.cli.commands` (``set_defaults(func=...)``), so dispatch is one call."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from flows.cli import commands
from tasks.stages import DATA_STAGES

MAX_PORT = 65535
NAME_HELP = "registered model name (default: registry.model_name in params.yaml)"
VERSION_HELP = "the version number, as `mlcycle models` lists it"

# The subparsers' add_parser: each group builder adds its commands through it.
AddParser = Callable[..., argparse.ArgumentParser]


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 1-{MAX_PORT}")
    return port


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``args.func(args)`` runs the command parsed."""
    parser = argparse.ArgumentParser(
        prog="mlcycle", description="Run the mlcycle ML lifecycle pipeline."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="on an error, show the full traceback after its one line (also: MLCYCLE_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_pipeline_commands(subparsers.add_parser)
    add_registry_commands(subparsers.add_parser)
    add_serving_commands(subparsers.add_parser)
    add_scheduling_commands(subparsers.add_parser)
    return parser


def add_pipeline_commands(add: AddParser) -> None:
    """``run`` (the whole training pipeline) and ``register`` (after a plain ``dvc repro``)."""
    stages = ", ".join(DATA_STAGES)
    run = add(
        "run",
        help=f"run the training pipeline: {stages}; register, deploy",
        description=f"Run the Prefect flow 'training-pipeline': the DVC stages {stages} (each "
        "skipped when unchanged), then register the model and deploy it. Overrides are written "
        "into params.yaml (as `dvc exp run -S` does) so DVC agrees with what ran.",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one params.yaml value, e.g. --set train.epochs=3 (repeatable)",
    )
    run.set_defaults(func=commands.run_pipeline)
    register = add(
        "register",
        help="register the evaluated model (after `dvc repro`) and promote it if it is better",
        description="Run the Prefect flow 'register-model': push the data to the DVC remote, "
        "register the model of the newest finished, evaluated run (or --run) with its lineage, "
        "check that the registered copy loads, and move `champion` if the gate in params.yaml "
        "(registry.*) says so.",
    )
    register.add_argument("--run", dest="run_id", help="the MLflow run id to register")
    register.set_defaults(func=commands.run_register)


def add_registry_commands(add: AddParser) -> None:
    """``models``, ``promote``, ``rollback`` and ``restore``: the registered versions."""
    models = add("models", help="list the registered versions and their aliases")
    models.add_argument("--name", help=NAME_HELP)
    models.set_defaults(func=commands.list_models)
    promote = add("promote", help="move `champion` to a version by hand (after a load-back check)")
    promote.add_argument("version", help=VERSION_HELP)
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even if its classes or input shape differ from the champion's",
    )
    promote.add_argument("--name", help=NAME_HELP)
    promote.set_defaults(func=commands.promote)
    rollback = add("rollback", help="move `champion` back to the version it replaced")
    rollback.add_argument("--name", help=NAME_HELP)
    rollback.set_defaults(func=commands.rollback)
    restore = add(
        "restore",
        help="bring back the data, params and dvc.lock a version was trained with",
        description="Fetch the version's dvc.lock and params.yaml from its MLflow run, `dvc "
        "pull` the data from the DVC remote, and verify each data hash against the version.",
    )
    restore.add_argument("version", help=VERSION_HELP)
    restore.add_argument("--name", help=NAME_HELP)
    restore.set_defaults(func=commands.restore_version)


def add_serving_commands(add: AddParser) -> None:
    """``serve`` (the HTTP app) and ``monitor`` (drift of what it served)."""
    serve = add(
        "serve",
        help="serve the champion model over HTTP (FastAPI), following its alias",
        description="Serve models:/<registry.model_name>@<serve.alias> with uvicorn: POST "
        "/predict, /predict/image; GET /health, /ready, /metadata, /metrics and a drawing page "
        "at /. The app reloads when the alias moves. Settings: serve.* in params.yaml.",
    )
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=port_number, help="port (default serve.port)")
    serve.add_argument(
        "--prediction-log",
        type=Path,
        help="SQLite file the served requests are logged to (default "
        "data/serving/predictions.sqlite, what monitoring reads)",
    )
    serve.set_defaults(func=commands.run_serve)
    add_monitor_command(add)


def add_monitor_command(add: AddParser) -> None:
    monitor = add(
        "monitor",
        help="compare live traffic with the served model's training data (drift); exit 0/3/4",
        description="Run the Prefect flow 'monitoring' once: the newest logged predictions of "
        "the served version (monitor.window, monitor.max_age_hours) or --batch, against what "
        "that version was trained on. Prints the decision and the HTML report's path. Exit "
        "code: 0 no drift, 3 drift, 4 not enough data (monitor.min_rows). The verdict goes to "
        "the Prefect API as an event (mlcycle.monitor.ok/.drift/.not-enough-data); on "
        "PREFECT_API_URL's server, the drift trigger of training-pipeline/scheduled retrains "
        "(once per monitor.cooldown_hours).",
    )
    monitor.add_argument(
        "--window", type=positive_int, help="newest logged predictions compared (monitor.window)"
    )
    monitor.add_argument(
        "--batch", type=Path, help="an .npz with `images` (and `labels`) to compare instead"
    )
    monitor.add_argument(
        "--prediction-log",
        type=Path,
        help="the SQLite file `mlcycle serve --prediction-log` logged to (default "
        "data/serving/predictions.sqlite)",
    )
    monitor.set_defaults(func=commands.run_monitor)


def add_scheduling_commands(add: AddParser) -> None:
    """``deployments``, ``worker`` and ``select-worker``: work a server or a study hands out."""
    deployments = add(
        "deployments",
        help="register the Prefect deployments of prefect.yaml on PREFECT_API_URL's server",
        description="Create the process work pool (schedule.work_pool) and the training slot "
        "when missing, then register training-pipeline/scheduled (with its drift trigger) and "
        "monitoring/hourly with the crons and time zone of params.yaml (schedule.*, monitor.*); "
        "warns when the server's scheduler creates no runs; re-run after editing params.yaml.",
    )
    deployments.add_argument("action", choices=["apply"], help="apply: create or update them")
    deployments.set_defaults(func=commands.apply_deployments)
    worker = add(
        "worker",
        help="start a Prefect worker on schedule.work_pool (runs the deployments' flow runs)",
        description="`prefect worker start --pool <schedule.work_pool> --type process`: flow "
        "runs of the deployments run as processes in the checkout `mlcycle deployments apply` "
        "ran in. Stop it with Ctrl-C; schedules live on the server and survive restarts.",
    )
    worker.set_defaults(func=commands.run_worker)
    select_worker = add(
        "select-worker",
        help="run trials of the select stage's Optuna study (train.model: auto) beside it",
        description="Join the study the select stage is running (same params.yaml and data, "
        "select.storage on a database every worker reaches, e.g. postgresql://...) and run its "
        "trials until select.max_trials finished or select.timeout_s passed. Start the stage "
        "first (`mlcycle run` or `dvc repro`), then as many workers as you have cores or GPUs.",
    )
    select_worker.set_defaults(func=commands.run_select_worker)

"""``mlcycle``: the command line over the flows and the model registry.

- ``mlcycle run [--set section.key=value ...]``: the ``training-pipeline`` flow (ends registered).
- ``mlcycle register [--run RUN_ID]``: the ``register-model`` flow, after a plain ``dvc repro``.
- ``mlcycle models``, ``promote VERSION``, ``rollback``: look at and move the ``champion`` alias.
- ``mlcycle restore VERSION``: bring back the exact data a version was trained on.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.config import ServeParams, load_params
from tasks.core.errors import MlcycleError, user_error
from tasks.core.paths import PREDICTION_LOG
from tasks.core.processes import Terminated, raise_terminated
from tasks.core.redaction import redact, without_credentials
from tasks.core.tracking import DEFAULT_TRACKING_URI, connect, tracking_uri
from tasks.lifecycle import workspace
from tasks.lifecycle.prefect_api import (
    PrefectApi,
    PrefectApiLost,
    api_lost,
    prefect_api,
    watching_api,
)
from tasks.stages import DATA_STAGES

if TYPE_CHECKING:
    from flows.monitoring import MonitoringOutcome
    from flows.training import PipelineOutcome
    from tasks.registry.gate import Registration
    from tasks.registry.versions import VersionRow


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 1-65535")
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
    parser = argparse.ArgumentParser(
        prog="mlcycle", description="Run the mlcycle ML lifecycle pipeline."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="on an error, show the full traceback after its one line (also: MLCYCLE_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stages = ", ".join(DATA_STAGES)
    run = commands.add_parser(
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
    register = commands.add_parser(
        "register",
        help="register the evaluated model (after `dvc repro`) and promote it if it is better",
        description="Run the Prefect flow 'register-model': push the data to the DVC remote, "
        "register the model of the newest finished, evaluated run (or --run) with its lineage, "
        "check that the registered copy loads, and move `champion` if the gate in params.yaml "
        "(registry.*) says so.",
    )
    register.add_argument("--run", dest="run_id", help="the MLflow run id to register")
    name_help = "registered model name (default: registry.model_name in params.yaml)"
    models = commands.add_parser("models", help="list the registered versions and their aliases")
    models.add_argument("--name", help=name_help)
    promote = commands.add_parser(
        "promote", help="move `champion` to a version by hand (after a load-back check)"
    )
    promote.add_argument("version", help="the version number, as `mlcycle models` lists it")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even if its classes or input shape differ from the champion's",
    )
    promote.add_argument("--name", help=name_help)
    rollback = commands.add_parser(
        "rollback", help="move `champion` back to the version it replaced"
    )
    rollback.add_argument("--name", help=name_help)
    restore = commands.add_parser(
        "restore",
        help="bring back the data, params and dvc.lock a version was trained with",
        description="Fetch the version's dvc.lock and params.yaml from its MLflow run, `dvc "
        "pull` the data from the DVC remote, and verify each data hash against the version.",
    )
    restore.add_argument("version", help="the version number, as `mlcycle models` lists it")
    restore.add_argument("--name", help=name_help)
    serve = commands.add_parser(
        "serve",
        help="serve the champion model over HTTP (FastAPI), following its alias",
        description="Serve models:/<registry.model_name>@<serve.alias> with uvicorn: POST "
        "/predict, /predict/image; GET /health, /ready, /metadata, /metrics and a drawing page "
        "at /. The app reloads when the alias moves. Settings: serve.* in params.yaml.",
    )
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=port_number, help="port (default serve.port)")
    monitor = commands.add_parser(
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
    deployments = commands.add_parser(
        "deployments",
        help="register the Prefect deployments of prefect.yaml on PREFECT_API_URL's server",
        description="Create the process work pool (schedule.work_pool) and the training slot "
        "when missing, then register training-pipeline/scheduled (with its drift trigger) and "
        "monitoring/hourly with the crons and time zone of params.yaml (schedule.*, monitor.*); "
        "warns when the server's scheduler creates no runs; re-run after editing params.yaml.",
    )
    deployments.add_argument("action", choices=["apply"], help="apply: create or update them")
    commands.add_parser(
        "worker",
        help="start a Prefect worker on schedule.work_pool (runs the deployments' flow runs)",
        description="`prefect worker start --pool <schedule.work_pool> --type process`: flow "
        "runs of the deployments run as processes in the checkout `mlcycle deployments apply` "
        "ran in. Stop it with Ctrl-C; schedules live on the server and survive restarts.",
    )
    commands.add_parser(
        "select-worker",
        help="run trials of the select stage's Optuna study (train.model: auto) beside it",
        description="Join the study the select stage is running (same params.yaml and data, "
        "select.storage on a database every worker reaches, e.g. postgresql://...) and run its "
        "trials until select.max_trials finished or select.timeout_s passed. Start the stage "
        "first (`mlcycle run` or `dvc repro`), then as many workers as you have cores or GPUs.",
    )
    serve.add_argument(
        "--prediction-log",
        type=Path,
        help="SQLite file the served requests are logged to (default "
        "data/serving/predictions.sqlite, what monitoring reads)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGINT and SIGTERM stop the command in its main thread: the flow records the run as
    # stopped, the children are stopped in order, and the exit code says which signal it was.
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _dispatch(args, _command_line(argv))
    except KeyboardInterrupt:
        return _stopped(args.command, "interrupted (Ctrl-C)", 130)
    except Terminated:
        return _stopped(args.command, "terminated (SIGTERM)", 143)
    except PrefectApiLost:  # its one line is out already (see `watching`)
        return 1
    except BrokenPipeError:  # `mlcycle models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        return _report(error, args.verbose or _debugging())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def console_main() -> None:
    """The ``mlcycle`` console script: :func:`main`, then a quick exit. It runs what the
    interpreter's exit runs (wait for the threads, then the exit handlers: logging's flush,
    Prefect's and MLflow's), flushes the output and skips the rest, the teardown that frees
    torch's, MLflow's and Prefect's modules: over a second of a short run here."""
    code = main()
    wait_for_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if wait_for_threads is None or run_exit_handlers is None:  # another Python: a plain exit
        sys.exit(code)
    wait_for_threads()
    if not api_lost():  # Prefect's handlers would retry the dead API for minutes
        run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dispatch(args: argparse.Namespace, command: str) -> int:
    if args.command == "run":
        return run_pipeline(args.overrides, command)
    if args.command == "register":
        return run_register(args.run_id, command)
    if args.command == "serve":
        return run_serve(args.host, args.port, args.prediction_log)
    if args.command == "monitor":
        return run_monitor(args.window, args.batch, args.prediction_log)
    if args.command == "deployments":
        return apply_deployments()
    if args.command == "worker":
        return run_worker()
    if args.command == "select-worker":
        return run_select_worker()
    return manage_registry(args, command)


def _report(error: Exception, verbose: bool) -> int:
    """The one error-translation point (see ``tasks.core.errors.user_error``): a failure a user
    can fix is one line, exit 1; anything else is a bug and keeps its traceback. ``verbose``
    adds the traceback under the line, for whoever debugs it."""
    translated = user_error(error)
    if translated is None:
        raise error
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    _error_line(str(translated))
    return 1


def _debugging() -> bool:
    return os.environ.get("MLCYCLE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _stop(signum: int, frame: object) -> None:
    """The first SIGINT/SIGTERM stops the command; later ones only say that it is stopping
    (the flow is recording how the run ended, and children get a few seconds each)."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _already_stopping)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise_terminated(signum, frame)


def _already_stopping(signum: int, frame: object) -> None:
    print("mlcycle: stopping, please wait (a few seconds)", file=sys.stderr, flush=True)


def _stopped(command: str, how: str, code: int) -> int:
    advice = {
        "run": "the MLflow run is marked KILLED and nothing was registered; `git checkout "
        "params.yaml dvc.lock && dvc checkout` restores the workspace, `mlcycle run` starts again",
        "register": "no alias moved unless the registration finished; `mlcycle register` "
        "again completes it",
        "restore": "the workspace's own dvc.lock and params.yaml are back; run it again",
    }.get(command, "run it again when ready")
    print(f"mlcycle: stopped, {how}: {advice}", file=sys.stderr)
    return code


def _command_line(argv: Sequence[str] | None) -> str:
    return shlex.join(["mlcycle", *(sys.argv[1:] if argv is None else argv)])


def _say(message: str) -> None:
    print(f"mlcycle: {message}", file=sys.stderr)


def _error_line(line: str) -> None:
    """``mlcycle: error: <line>``, on one line and without credentials (a URL's password)."""
    one_line = " ".join(redact(line).split())
    print(f"mlcycle: error: {one_line}", file=sys.stderr, flush=True)


@contextmanager
def watching(url: str, settle: Callable[[str], str]) -> Iterator[None]:
    """The command ends within a minute of its Prefect API going away, with one error line
    saying what was lost (``settle``); see ``tasks.lifecycle.prefect_api.watching_api``."""
    with watching_api(url, settle, _error_line):
        yield


def _settle_pipeline(since_ms: int) -> Callable[[str], str]:
    def settle(why: str) -> str:
        from tasks.lifecycle.pipeline import settle_runs_of_this_process

        return settle_runs_of_this_process(why, since_ms)

    return settle


def _settle_registration(why: str) -> str:
    return "no alias moved unless the registration finished; `mlcycle register` completes it"


@contextmanager
def holding_workspace(command: str) -> Iterator[None]:
    """This workspace to ``command`` alone (see ``tasks.lifecycle.workspace``)."""
    with workspace.holding_workspace(command, _say):
        yield


@contextmanager
def flow_api(*, wait: bool = True) -> Iterator[PrefectApi]:
    """``prefect_api``: the API this command's flows report to. With the temporary one (no
    PREFECT_API_URL), Prefect's "View at http://127.0.0.1:<port>/..." lines are left out: that
    server stops with the command. The summary says where to browse the run afterwards."""
    with prefect_api(wait=wait) as api, ExitStack() as links:
        if api.temporary:
            from tasks.core.console import without_flow_run_links

            links.enter_context(without_flow_run_links())
        yield api


def flow_run_link(flow_run_id: str | None, temporary: bool) -> str:
    """Where a flow run can be browsed: on PREFECT_API_URL's server, its UI; after a temporary
    server, the UI of `make prefect-ui`, which reads the same database (PREFECT_HOME)."""
    from prefect.settings import PREFECT_UI_URL

    from tasks.core.console import later_prefect_ui

    base = later_prefect_ui() if temporary else PREFECT_UI_URL.value() or ""
    runs = f"{without_credentials(base).rstrip('/')}/runs"
    return f"{runs}/flow-run/{flow_run_id}" if flow_run_id else runs


# The flow commands start the temporary Prefect API first and make their checks and heavy
# imports while it comes up (see tasks.lifecycle.prefect_api): its start-up is most of a short
# run's overhead. Params are read before it: a bad override is refused at once.


def run_pipeline(overrides: Sequence[str], command: str) -> int:
    # Bad overrides, params this machine cannot run and an unreachable tracking server fail
    # here, before anything is written.
    params = load_params(overrides=overrides)
    with flow_api(wait=False) as api:
        from tasks.lifecycle.preflight import check_run

        check_run(params)
        connect()
        from flows.training import training_pipeline

        with holding_workspace(command):
            started_ms = int(time.time() * 1000)
            with watching(api.ready(), _settle_pipeline(started_ms)):
                outcome = training_pipeline(params=params)
    flow_run = flow_run_link(outcome.flow_run_id, api.temporary)
    print(format_outcome(outcome, flow_run, api.temporary))
    return 0


def run_register(run_id: str | None, command: str) -> int:
    params = load_params()
    with flow_api(wait=False) as api:
        connect()
        from flows.registry import register_model

        with holding_workspace(command), watching(api.ready(), _settle_registration):
            registration = register_model(run_id=run_id, params=params)
    print(format_registration(registration))
    return 0


def run_monitor(window: int | None, batch: Path | None, prediction_log: Path | None = None) -> int:
    params = load_params()
    if batch is not None and not batch.is_file():
        raise MlcycleError(f"{batch}: no such file (--batch wants an .npz with `images`)")
    with flow_api(wait=False) as api:
        connect()
        from flows.monitoring import monitoring

        api.ready()
        outcome = monitoring(
            window=window,
            batch=str(batch) if batch else None,
            params=params,
            prediction_log=str(prediction_log) if prediction_log else None,
        )
    print(format_monitoring(outcome))
    return outcome.monitored.exit_code


def format_monitoring(outcome: MonitoringOutcome) -> str:
    from tasks.lifecycle.monitor import MONITORING_EXPERIMENT
    from tasks.monitoring.drift import NOT_ENOUGH_DATA

    monitored = outcome.monitored
    result = monitored.result
    lines = [
        "",
        f"monitoring {monitored.served.name} v{monitored.served.version} "
        f"(@{monitored.served.alias}): {result.decision.upper()}",
        f"  compared: {monitored.source}",
    ]
    for check in result.checks:
        if check.decides and check.value is not None:
            threshold = f" (threshold {check.threshold:g})" if check.threshold is not None else ""
            flag = "DRIFT" if check.drifted else "ok"
            lines.append(
                f"  {check.name:<16} {check.statistic} {check.value:.4g}{threshold}: {flag}"
            )
    if result.decision == NOT_ENOUGH_DATA:
        lines.append(
            "  fewer than monitor.min_rows rows: log more traffic or pass --window/--batch"
        )
    lines += [
        f"  report: {monitored.report}",
        f"  MLflow run: {monitored.run_id} (experiment {MONITORING_EXPERIMENT})",
        f"  retraining: {outcome.retraining}",
    ]
    return "\n".join(lines)


def apply_deployments() -> int:
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


def run_worker() -> int:
    from tasks.lifecycle.deployments import server_url, worker_command

    server_url()
    command = worker_command(load_params().schedule)
    print(f"mlcycle: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)  # the worker owns the terminal (Ctrl-C stops it)


def run_select_worker() -> int:
    from tasks.core.console import configure_logging
    from tasks.stages.select import run_worker as run_trials

    configure_logging()
    finished = run_trials(load_params())
    print(f"mlcycle: the study holds {finished} finished trials")
    return 0


def run_serve(host: str | None, port: int | None, prediction_log: Path | None) -> int:
    from tasks.core.console import configure_logging
    from tasks.serving.app import serve

    params = load_params()
    configure_logging()
    connect()
    serve(params.serve, params.registry.model_name, host, port, prediction_log or PREDICTION_LOG)
    return 0


def manage_registry(args: argparse.Namespace, command: str) -> int:
    from flows.registry import promote_model, rollback_model
    from tasks.registry.restore import restore
    from tasks.registry.versions import list_versions

    params = load_params()
    name = args.name or params.registry.model_name
    if args.command == "models":
        print(format_versions(name, list_versions(name)))
    elif args.command == "promote":
        with flow_api():  # first: an unreachable PREFECT_API_URL fails before MLflow loads
            connect()
            previous = promote_model(name, args.version, params.registry, args.force)
        print(f"{name}: champion is now version {args.version} (was {previous or 'none'})")
        print(notify_serving_app(params.serve))
    elif args.command == "rollback":
        with flow_api():
            connect()
            current, previous = rollback_model(name, params.registry)
        print(f"{name}: champion rolled back from version {current} to version {previous}")
        print(notify_serving_app(params.serve))
    elif args.command == "restore":
        with holding_workspace(command):
            restored = restore(name, args.version)
        print(f"{name} v{restored.version}: data, params.yaml and dvc.lock restored")
        for path, md5 in restored.hashes.items():
            print(f"  {path}: {md5} (verified)")
        if not restored.commit_matches:
            print(
                f"  note: trained at git commit {restored.commit}; this checkout is elsewhere. "
                f"`git checkout {restored.commit[:12]}` first for the exact code."
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


def format_versions(name: str, rows: list[VersionRow]) -> str:
    def score(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "-"

    lines = [
        f"{name}:",
        f"  {'version':>7}  {'aliases':<20} {'model':<12} {'accuracy':>8} {'macro-F1':>8}  "
        f"{'check':<7} {'data':<12} {'commit':<12} {'created':<16} decision",
    ]
    for row in rows:
        lines.append(
            f"  {row.version:>7}  {','.join(row.aliases) or '-':<20} {row.family or '-':<12} "
            f"{score(row.accuracy):>8} {score(row.macro_f1):>8}  {row.check:<7} "
            f"{row.data[:12]:<12} {row.commit[:12]:<12} {row.created:<16} {row.decision}"
        )
    return "\n".join(lines)


def format_registration(registration: Registration) -> str:
    outcome = "promoted to champion" if registration.promoted else "not promoted"
    lines = [
        f"  registered: {registration.name} version {registration.version}, {outcome}: "
        f"{registration.reason}",
        f"  champion: {'version ' + registration.champion if registration.champion else 'none'}",
    ]
    if registration.recovered:
        lines.insert(0, format_recovered(registration))
    return "\n".join(lines)


def format_recovered(registration: Registration) -> str:
    return (
        f"  recovered: the run left evaluated but unregistered ({registration.recovered}) is "
        f"registered now: {registration.name} version {registration.version}, "
        f"{'promoted to champion' if registration.promoted else 'not promoted'}"
    )


def format_outcome(outcome: PipelineOutcome, flow_run: str, temporary_prefect: bool) -> str:
    """The run's summary. ``flow_run``: its Prefect flow run's page; ``temporary_prefect``: on
    a server that stopped with the command, so `make prefect-ui` serves that page."""
    summary = outcome.summary
    baseline = summary.baseline
    lines = [
        "",
        f"training-pipeline finished: {summary.model} test accuracy {summary.accuracy:.4f}, "
        f"macro-F1 {summary.macro_f1:.4f}",
    ]
    if baseline:
        lines.append(
            f"  baseline ({baseline['model']}): accuracy {baseline['accuracy']:.4f}, "
            f"macro-F1 {baseline['macro_f1']:.4f}"
        )
    if summary.selection:
        lines.append(
            f"  selected: {summary.selection} (reports/selection.json, reports/selection.png)"
        )
    lines += [
        f"  stages run: {', '.join(summary.stages_run) or 'none'}; "
        f"unchanged, skipped: {', '.join(summary.stages_skipped) or 'none'}",
        f"  MLflow run: {summary.run_url}",
        f"  Prefect flow run: {flow_run}",
    ]
    if outcome.recovered is not None:
        lines.append(format_recovered(outcome.recovered))
    lines.append(format_registration(outcome.registration))
    lines.append(f"  deploy: {outcome.deployment.message}")
    lines += [
        "",
        "Look further:",
        "  mlcycle models                                # registered versions and aliases",
    ]
    uri = tracking_uri()
    if uri == DEFAULT_TRACKING_URI:
        lines.append(f"  mlflow ui --backend-store-uri {uri}   # then open the run link above")
    else:
        lines.append(f"  MLflow tracking server: {redact(uri)}")
    if temporary_prefect:
        lines.append(
            "  make prefect-ui                               # then open the flow run link above"
        )
    lines += [
        "  dvc metrics show                              # accuracy, macro-F1, baseline",
        "  dvc plots show                                # loss curves, confusion matrix "
        "(dvc_plots/index.html)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    console_main()

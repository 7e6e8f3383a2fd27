"""``mlcycle``: the command line over the flows and the model registry.

- ``mlcycle run [--set section.key=value ...]``: the ``training-pipeline`` flow (ends registered).
- ``mlcycle register [--run RUN_ID]``: the ``register-model`` flow, after a plain ``dvc repro``.
- ``mlcycle models``, ``promote VERSION``, ``rollback``: look at and move the ``champion`` alias.
- ``mlcycle restore VERSION``: bring back the exact data a version was trained on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.config import ServeParams, load_params
from tasks.core.errors import MlcycleError
from tasks.core.paths import PREDICTION_LOG
from tasks.core.tracking import DEFAULT_TRACKING_URI, connect, tracking_uri
from tasks.registry.gate import Registration
from tasks.registry.versions import VersionRow

if TYPE_CHECKING:
    from flows.training import PipelineOutcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcycle", description="Run the mlcycle ML lifecycle pipeline."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the training pipeline: collect, preprocess, train, evaluate",
        description="Run the Prefect flow 'training-pipeline' over the DVC stages. Overrides "
        "are written into params.yaml (as `dvc exp run -S` does) so DVC agrees with what ran.",
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
    serve.add_argument("--port", type=int, help="port (default serve.port)")
    serve.add_argument(
        "--prediction-log",
        type=Path,
        help="SQLite file the served requests are logged to (default "
        "data/serving/predictions.sqlite, what monitoring reads)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_pipeline(args.overrides)
        if args.command == "register":
            return run_register(args.run_id)
        if args.command == "serve":
            return run_serve(args.host, args.port, args.prediction_log)
        return manage_registry(args)
    except MlcycleError as error:
        print(f"mlcycle: error: {error}", file=sys.stderr)
        return 1


def run_pipeline(overrides: Sequence[str]) -> int:
    # Bad overrides and an unreachable tracking server fail here, before Prefect starts.
    params = load_params(overrides=overrides)
    connect()
    from flows.training import training_pipeline

    print(format_outcome(training_pipeline(params=params)))
    return 0


def run_register(run_id: str | None) -> int:
    params = load_params()
    connect()
    from flows.registry import register_model

    print(format_registration(register_model(run_id=run_id, params=params)))
    return 0


def run_serve(host: str | None, port: int | None, prediction_log: Path | None) -> int:
    from tasks.core.console import configure_logging
    from tasks.serving.app import serve

    params = load_params()
    configure_logging()
    connect()
    serve(params.serve, params.registry.model_name, host, port, prediction_log or PREDICTION_LOG)
    return 0


def manage_registry(args: argparse.Namespace) -> int:
    from flows.registry import promote_model, rollback_model
    from tasks.registry.restore import restore
    from tasks.registry.versions import list_versions

    params = load_params()
    name = args.name or params.registry.model_name
    if args.command == "models":
        print(format_versions(name, list_versions(name)))
    elif args.command == "promote":
        connect()
        previous = promote_model(name, args.version)
        print(f"{name}: champion is now version {args.version} (was {previous or 'none'})")
        print(notify_serving_app(params.serve))
    elif args.command == "rollback":
        connect()
        current, previous = rollback_model(name)
        print(f"{name}: champion rolled back from version {current} to version {previous}")
        print(notify_serving_app(params.serve))
    elif args.command == "restore":
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
        f"  {'version':>7}  {'aliases':<20} {'accuracy':>8} {'macro-F1':>8}  {'check':<7} "
        f"{'data':<12} {'commit':<12} {'created':<16} decision",
    ]
    for row in rows:
        lines.append(
            f"  {row.version:>7}  {','.join(row.aliases) or '-':<20} {score(row.accuracy):>8} "
            f"{score(row.macro_f1):>8}  {row.check:<7} {row.data[:12]:<12} {row.commit[:12]:<12} "
            f"{row.created:<16} {row.decision}"
        )
    return "\n".join(lines)


def format_registration(registration: Registration) -> str:
    outcome = "promoted to champion" if registration.promoted else "not promoted"
    return (
        f"  registered: {registration.name} version {registration.version}, {outcome}: "
        f"{registration.reason}\n"
        f"  champion: {'version ' + registration.champion if registration.champion else 'none'}"
    )


def format_outcome(outcome: PipelineOutcome) -> str:
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
    lines += [
        f"  stages run: {', '.join(summary.stages_run) or 'none'}; "
        f"unchanged, skipped: {', '.join(summary.stages_skipped) or 'none'}",
        f"  MLflow run: {summary.run_url}",
    ]
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
        lines.append(f"  MLflow tracking server: {uri}")
    lines += [
        "  prefect server start                          # flow runs, task logs, the evaluation "
        "artifact",
        "  dvc metrics show                              # accuracy, macro-F1, baseline",
        "  dvc plots show                                # loss curves, confusion matrix "
        "(dvc_plots/index.html)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

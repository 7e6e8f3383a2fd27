"""``mlcycle``: the command line over the flows.

``mlcycle run [--set section.key=value ...]`` runs the ``training-pipeline`` flow. Later
sub-commands (serve, models, promote, deploy, monitor) join this parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tasks.config import MlcycleError, load_params
from tasks.pipeline import PipelineSummary
from tasks.tracking import DEFAULT_TRACKING_URI, connect, tracking_uri


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_pipeline(args.overrides)
    except MlcycleError as error:
        print(f"mlcycle: error: {error}", file=sys.stderr)
        return 1
    return 2


def run_pipeline(overrides: Sequence[str]) -> int:
    # Bad overrides and an unreachable tracking server fail here, before Prefect starts.
    params = load_params(overrides=overrides)
    connect()
    from flows.training import training_pipeline

    summary = training_pipeline(params=params)
    print(format_summary(summary))
    return 0


def format_summary(summary: PipelineSummary) -> str:
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
        "",
        "Look further:",
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

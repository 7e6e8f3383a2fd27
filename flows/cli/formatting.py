"""What ``mlcycle`` prints: each command's summary, its progress lines and its one error line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tasks.core.redaction import redact
from tasks.core.tracking import DEFAULT_TRACKING_URI, tracking_uri

SHORT_ID = 12  # characters of a data hash or a commit shown in a listing

if TYPE_CHECKING:
    from flows.monitoring import MonitoringOutcome
    from flows.training import PipelineOutcome
    from tasks.registry.gate import Registration
    from tasks.registry.versions import VersionRow


def say(message: str) -> None:
    print(f"mlcycle: {message}", file=sys.stderr)


def error_line(line: str) -> None:
    """``mlcycle: error: <line>``, on one line and without credentials (a URL's password)."""
    one_line = " ".join(redact(line).split())
    print(f"mlcycle: error: {one_line}", file=sys.stderr, flush=True)


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
            f"{row.data[:SHORT_ID]:<12} {row.commit[:SHORT_ID]:<12} {row.created:<16} "
            f"{row.decision}"
        )
    return "\n".join(lines)


def format_monitoring(outcome: MonitoringOutcome) -> str:
    from tasks.lifecycle.monitor_publish import MONITORING_EXPERIMENT
    from tasks.monitoring.verdict import NOT_ENOUGH_DATA

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

"""The verdict recorded where people look: the HTML report under ``reports/monitoring/``, an
MLflow run in the ``mlcycle-monitoring`` experiment (the numbers, the thresholds, the report)
and, inside a Prefect flow, a table artifact of the deciding checks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from tasks.core.config import Params
from tasks.core.lineage import TAG_FLOW_RUN
from tasks.core.paths import REPORTS_DIR
from tasks.core.tracking import ensure_experiment
from tasks.lifecycle.monitor_served import Served
from tasks.lifecycle.monitor_window import Window
from tasks.monitoring.features import image_features
from tasks.monitoring.reference import Reference
from tasks.monitoring.report import write_report
from tasks.monitoring.verdict import DriftResult

MONITORING_EXPERIMENT = "mlcycle-monitoring"
MONITORING_REPORTS = REPORTS_DIR / "monitoring"
TAG_MODEL_NAME = "mlcycle.model_name"
TAG_MODEL_VERSION = "mlcycle.model_version"
TAG_DECISION = "mlcycle.decision"
SOURCE_PARAM_CHARS = 500  # MLflow refuses a longer param value
TABLE_COLUMNS = ("check", "kind", "statistic", "value", "threshold", "drifted")
# Microseconds in the name: two monitors at once write two files.
REPORT_STAMP = "%Y%m%dT%H%M%S.%fZ"


def publish(
    params: Params, served: Served, reference: Reference, window: Window, result: DriftResult
) -> tuple[Path, str]:
    """The HTML report under reports/monitoring/, an MLflow run in ``mlcycle-monitoring`` with
    the numbers and the report, and (inside a flow) a Prefect table artifact. Returns the
    report's path and the run's id."""
    report = (
        MONITORING_REPORTS
        / f"{datetime.now(UTC):{REPORT_STAMP}}-{served.name}-v{served.version}.html"
    )
    features = image_features(window.images) if len(window.images) else window.images
    write_report(
        reference,
        features,
        window.probabilities,
        result,
        report,
        model=f"{served.name} v{served.version}",
    )
    run_id = _monitoring_run(params, served, window, result, report)
    _table_artifact(served, result, report)
    return report, run_id


def _monitoring_run(
    params: Params, served: Served, window: Window, result: DriftResult, report: Path
) -> str:
    """One finished MLflow run holding the verdict: its numbers, the monitor's thresholds, the
    window's source and the report."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tags = {
        TAG_MODEL_NAME: served.name,
        TAG_MODEL_VERSION: served.version,
        TAG_DECISION: result.decision,
        "mlflow.runName": f"monitor v{served.version}: {result.decision}",
    }
    if flow_run := _prefect_flow_run_id():
        tags[TAG_FLOW_RUN] = flow_run
    run_id = client.create_run(ensure_experiment(MONITORING_EXPERIMENT), tags=tags).info.run_id
    now = int(time.time() * 1000)
    thresholds = [
        Param(f"monitor.{key}", str(value)) for key, value in params.monitor.model_dump().items()
    ]
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in result.metrics().items()],
        params=[*thresholds, Param("source", window.source[:SOURCE_PARAM_CHARS])],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    client.log_artifact(run_id, str(report), "report")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _prefect_flow_run_id() -> str | None:
    """The Prefect flow run this runs in (None outside one); not an MLflow run id."""
    from prefect.runtime import flow_run

    return flow_run.get_id()


def _table_artifact(served: Served, result: DriftResult, report: Path) -> None:
    """The deciding checks as a Prefect table on the flow run's page; nothing outside a flow."""
    if _prefect_flow_run_id() is None:
        return
    from prefect.artifacts import create_table_artifact

    rows = [
        {key: row[key] for key in TABLE_COLUMNS} for row in result.summary_rows() if row["decides"]
    ]
    create_table_artifact(
        key="drift-summary",
        table=rows or [{"check": "-", "decision": result.decision, "rows": result.rows}],
        description=(
            f"{served.name} v{served.version}: **{result.decision}** over {result.rows} rows; "
            f"report: {report.resolve()}"
        ),
    )

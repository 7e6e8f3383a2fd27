"""Monitoring's side effects: find the served version and its reference, read the live window,
record the verdict (HTML report, MLflow run, Prefect artifact), and trigger retraining on drift.

The statistics live in ``tasks.monitoring``; this module only gathers their inputs and publishes
their outputs. The reference is the one the evaluate stage wrote for the served version and
logged to its MLflow run (``monitoring/`` artifacts).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np
from prefect import task

from tasks.core.config import Params
from tasks.core.console import run_logger
from tasks.core.dvc import data_versions
from tasks.core.errors import MlcycleError
from tasks.core.files import file_md5
from tasks.core.images import prepare_images
from tasks.core.lineage import TAG_DVC_PREFIX, TAG_FLOW_RUN, TAG_MODEL_MD5, TAG_MODEL_RUN
from tasks.core.paths import MODEL_FILE, PREDICTION_LOG, PROCESSED_DIR, REPORTS_DIR
from tasks.core.tracking import ModelVersionNotFound, get_model_version
from tasks.lifecycle.deployments import TRAINING_DEPLOYMENT
from tasks.monitoring.drift import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, DriftResult, compare
from tasks.monitoring.drift import write_report as write_drift_report
from tasks.monitoring.features import image_features
from tasks.monitoring.reference import (
    REFERENCE_FILE_NAME,
    Reference,
    load_reference,
    reference_from_split,
    save_reference,
)
from tasks.stages.evaluate import MONITORING_ARTIFACT_PATH

MONITORING_EXPERIMENT = "mlcycle-monitoring"
MONITORING_REPORTS = REPORTS_DIR / "monitoring"
EXIT_CODES = {NO_DRIFT: 0, DRIFT: 3, NOT_ENOUGH_DATA: 4}
DRIFT_TAG = "mlcycle-drift"  # on the training runs monitoring triggers (the cool-down reads it)
TAG_MODEL_NAME = "mlcycle.model_name"
TAG_MODEL_VERSION = "mlcycle.model_version"
TAG_DECISION = "mlcycle.decision"


class LoggedRows(Protocol):
    """What the serving room's prediction log reader returns (``read_window``)."""

    images: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int: ...


# (path, model name, version, newest rows, logged since) -> rows: handed in by the flow, as
# serving's log is a sibling room of this one
LogReader = Callable[[Path, str, str, int, float], LoggedRows]


class MonitorError(MlcycleError):
    """Nothing to monitor (no served version, no reference) or a batch that cannot be read."""


@dataclass(frozen=True)
class Served:
    name: str
    alias: str
    version: str
    run_id: str


@dataclass(frozen=True)
class Window:
    """What is compared: images as the model's preprocessing made them, its softmax output, the
    feedback labels (-1 where none), and where they came from."""

    images: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    source: str


@dataclass(frozen=True)
class MonitorOutcome:
    served: Served
    result: DriftResult
    report: Path
    run_id: str
    source: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result.decision]


def served_version(params: Params) -> Served:
    """The version ``serve.alias`` (champion) points at: what the app serves."""
    name, alias = params.registry.model_name, params.serve.alias
    try:
        version = get_model_version(name, alias=alias)
    except ModelVersionNotFound:
        raise MonitorError(
            f"no version of '{name}' has the alias '{alias}': nothing is served yet "
            "(`mlcycle run` trains, registers and promotes one)"
        ) from None
    return Served(name, alias, str(version.version), version.run_id)


def served_reference(served: Served) -> Reference:
    """The reference the evaluate stage logged to the served version's run (rebuilt from this
    workspace for a version evaluated before references existed, when it can be)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    artifact = f"{MONITORING_ARTIFACT_PATH}/{REFERENCE_FILE_NAME}"
    with tempfile.TemporaryDirectory(prefix="mlcycle-reference-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=served.run_id, artifact_path=artifact, dst_path=folder
            )
        except (MlflowException, OSError):
            return rebuilt_reference(served, artifact)
        return load_reference(Path(path))


def rebuilt_reference(served: Served, artifact: str) -> Reference:
    """Rebuild a missing reference when this workspace holds the version's data and model:
    the DVC hash of ``data/processed`` and the model file's md5 that the version recorded.
    Logged to the version's run, so it is built once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(served.run_id)
    wanted_data = run.data.tags.get(f"{TAG_DVC_PREFIX}{PROCESSED_DIR.as_posix()}")
    model_run = run.data.tags.get(TAG_MODEL_RUN, served.run_id)
    wanted_model = client.get_run(model_run).data.tags.get(TAG_MODEL_MD5)
    have_data = data_versions(verify=True).get(PROCESSED_DIR.as_posix())
    have_model = file_md5(MODEL_FILE) if MODEL_FILE.is_file() else None
    if not wanted_data or (have_data, have_model) != (wanted_data, wanted_model):
        raise MonitorError(
            f"{served.name} version {served.version} has no monitoring reference ({artifact} "
            f"of run {served.run_id}), and this workspace holds other data or another model "
            f"than it was trained on: `mlcycle restore {served.version}` brings them back from "
            "the DVC remote by the hashes it recorded, then `mlcycle monitor` rebuilds it"
        )
    reference = reference_from_split(
        MODEL_FILE, PROCESSED_DIR, run.data.metrics.get("test_accuracy")
    )
    with tempfile.TemporaryDirectory(prefix="mlcycle-reference-") as folder:
        path = save_reference(reference, Path(folder) / REFERENCE_FILE_NAME)
        client.log_artifact(served.run_id, str(path), MONITORING_ARTIFACT_PATH)
    run_logger("mlcycle.monitor").warning(
        "monitor: %s v%s had no monitoring reference: rebuilt from this workspace's data "
        "(%s) and model, and logged to run %s",
        served.name,
        served.version,
        wanted_data[:12],
        served.run_id,
    )
    return reference


def logged_window(
    params: Params,
    served: Served,
    reference: Reference,
    read_log: LogReader,
    log_path: Path,
    window: int,
) -> Window:
    """The newest ``window`` logged predictions of the served version within
    ``monitor.max_age_hours``."""
    since = time.time() - params.monitor.max_age_hours * 3600
    logged = read_log(log_path, served.name, served.version, window, since)
    images = fitted(logged.images, reference) if len(logged) else logged.images
    source = f"{log_path}: newest {len(logged)} predictions of version {served.version}"
    return Window(images, logged.probabilities, logged.labels, source)


def batch_window(served: Served, reference: Reference, path: Path) -> Window:
    """An ``.npz`` batch (``images``, optional ``labels``) scored by the served version now."""
    import mlflow.pyfunc
    from scipy.special import softmax

    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "images" not in arrays.files:
                raise MonitorError(f"{path}: no 'images' array (has {', '.join(arrays.files)})")
            images = np.asarray(arrays["images"])
            labels = np.asarray(arrays["labels"]) if "labels" in arrays.files else None
    except (OSError, ValueError) as error:
        raise MonitorError(f"{path}: not an .npz file with an 'images' array ({error})") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise MonitorError(
            f"{path}: 'images' must be uint8 (N, H, W, C) or (N, H, W), got {images.dtype} "
            f"{images.shape}"
        )
    if labels is not None and labels.shape != (len(images),):
        raise MonitorError(f"{path}: 'labels' must hold one class index per image")
    images = fitted(images, reference)
    model = mlflow.pyfunc.load_model(f"models:/{served.name}/{served.version}")
    logits = np.asarray(model.predict(images)) if len(images) else np.zeros((0, 0))
    probabilities = softmax(logits, axis=1) if len(images) else logits
    labels = labels.astype(np.int64) if labels is not None else np.full(len(images), -1)
    return Window(images, probabilities.astype(np.float32), labels, f"{path}: {len(images)} images")


def fitted(images: np.ndarray, reference: Reference) -> np.ndarray:
    """Images brought to the reference's size and channels, as the model's preprocessing does."""
    height, _, channels = reference.image_shape
    return prepare_images(images, height, channels)


def check_window(params: Params, window: Window, reference: Reference) -> DriftResult:
    labels = window.labels if (window.labels >= 0).any() else None
    return compare(reference, window.images, window.probabilities, params.monitor, labels)


def publish(
    params: Params, served: Served, reference: Reference, window: Window, result: DriftResult
) -> tuple[Path, str]:
    """The HTML report under reports/monitoring/, an MLflow run in ``mlcycle-monitoring`` with
    the numbers and the report, and (inside a flow) a Prefect table artifact."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")  # two monitors at once: two files
    report = MONITORING_REPORTS / f"{stamp}-{served.name}-v{served.version}.html"
    features = image_features(window.images) if len(window.images) else window.images
    write_drift_report(reference, features, window.probabilities, result, report)

    client = MlflowClient()
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(MONITORING_EXPERIMENT)
    )
    tags = {
        TAG_MODEL_NAME: served.name,
        TAG_MODEL_VERSION: served.version,
        TAG_DECISION: result.decision,
        "mlflow.runName": f"monitor v{served.version}: {result.decision}",
    }
    if flow_run := _flow_run_id():
        tags[TAG_FLOW_RUN] = flow_run
    run = client.create_run(experiment_id, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, value, now, 0) for key, value in result.metrics().items()],
        params=[
            Param(f"monitor.{key}", str(value))
            for key, value in params.monitor.model_dump().items()
        ]
        + [Param("source", window.source[:500])],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    client.log_artifact(run.info.run_id, str(report), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    _table_artifact(served, result, report)
    return report, run.info.run_id


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.get_id()


def _table_artifact(served: Served, result: DriftResult, report: Path) -> None:
    if _flow_run_id() is None:
        return
    from prefect.artifacts import create_table_artifact

    rows = [
        {key: row[key] for key in ("check", "kind", "statistic", "value", "threshold", "drifted")}
        for row in result.summary_rows()
        if row["decides"]
    ]
    create_table_artifact(
        key="drift-summary",
        table=rows or [{"check": "-", "decision": result.decision, "rows": result.rows}],
        description=(
            f"{served.name} v{served.version}: **{result.decision}** over {result.rows} rows; "
            f"report: {report.resolve()}"
        ),
    )


def monitor(
    params: Params,
    read_log: LogReader,
    window: int | None = None,
    batch: Path | None = None,
    log_path: Path = PREDICTION_LOG,
) -> MonitorOutcome:
    """Compare the served version's reference with the live window (or ``batch``); publish."""
    log = run_logger("mlcycle.monitor")
    served = served_version(params)
    reference = served_reference(served)
    if batch is not None:
        current = batch_window(served, reference, batch)
    else:
        current = logged_window(
            params, served, reference, read_log, log_path, window or params.monitor.window
        )
    result = check_window(params, current, reference)
    report, run_id = publish(params, served, reference, current, result)
    log.info(
        "monitor: %s v%s: %s (%d rows%s); report %s",
        served.name,
        served.version,
        result.decision,
        result.rows,
        f", drifted: {', '.join(c.name for c in result.drifted)}" if result.drifted else "",
        report,
    )
    return MonitorOutcome(served, result, report, run_id, current.source)


def retrain_on_drift(params: Params, outcome: MonitorOutcome) -> str:
    """On drift, a run of ``training-pipeline/scheduled`` through Prefect (the promotion gate
    still decides what is served), unless one was triggered within ``monitor.cooldown_hours``.
    Returns what happened, for people."""
    if outcome.result.decision != DRIFT:
        return f"no retraining: {outcome.result.decision}"
    if not params.monitor.retrain_on_drift:
        return "no retraining: monitor.retrain_on_drift is false"
    how = (
        "start a Prefect server (`make prefect-ui`), `export PREFECT_API_URL="
        "http://127.0.0.1:4200/api`, `make deploy` and `make worker`"
    )
    if not os.environ.get("PREFECT_API_URL"):
        return f"drift, but no retraining: no Prefect server with deployments; {how}"
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAINING_DEPLOYMENT)
        except ObjectNotFound:
            return f"drift, but no retraining: {TRAINING_DEPLOYMENT} is not deployed; {how}"
        recent = _recent_drift_runs(client, deployment.id, params.monitor.cooldown_hours)
    if recent:
        last = recent[0]
        until = last.created + timedelta(hours=params.monitor.cooldown_hours)
        return (
            f"drift, but no retraining: cool-down (monitor.cooldown_hours="
            f"{params.monitor.cooldown_hours:g}): flow run '{last.name}' was triggered at "
            f"{last.created:%Y-%m-%d %H:%M} UTC; the next can start after {until:%Y-%m-%d %H:%M}"
        )
    run = run_deployment(TRAINING_DEPLOYMENT, timeout=0, tags=[DRIFT_TAG])
    return f"drift: triggered {TRAINING_DEPLOYMENT} flow run '{run.name}' ({run.id})"


def _recent_drift_runs(client, deployment_id, hours: float) -> list:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    since = datetime.now(UTC) - timedelta(hours=hours)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[DRIFT_TAG])),
        sort=FlowRunSort.START_TIME_DESC,
        limit=50,
    )
    return sorted(
        (run for run in runs if run.created and run.created >= since),
        key=lambda run: run.created,
        reverse=True,
    )


monitor_task = task(name="monitor", retries=0)(monitor)
retrain_on_drift_task = task(name="retrain-on-drift", retries=1, retry_delay_seconds=5)(
    retrain_on_drift
)

"""Monitoring's side effects: find the served version and its reference, read the live window,
record the verdict (HTML report, MLflow run, Prefect artifact) and send it as a Prefect event
(the training deployment's trigger retrains on drift).

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
from datetime import UTC, datetime
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
from tasks.core.lineage import TAG_FLOW_RUN, TAG_MODEL_MD5, TAG_MODEL_RUN, Lineage
from tasks.core.paths import MODEL_FILE, PREDICTION_LOG, PROCESSED_DIR, REPORTS_DIR
from tasks.core.tracking import ModelVersionNotFound, get_model_version
from tasks.lifecycle.deployments import (
    DRIFT_EVENT,
    RETRAIN_PENDING_LABEL,
    TRAINING_DEPLOYMENT,
    drift_triggers,
    pending_retrain,
)
from tasks.monitoring.drift import compare
from tasks.monitoring.features import image_features
from tasks.monitoring.reference import (
    REFERENCE_FILE_NAME,
    Reference,
    load_reference,
    reference_from_split,
    save_reference,
)
from tasks.monitoring.report import write_report as write_drift_report
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, DriftResult
from tasks.stages.evaluate import MONITORING_ARTIFACT_PATH

MONITORING_EXPERIMENT = "mlcycle-monitoring"
MONITORING_REPORTS = REPORTS_DIR / "monitoring"
EXIT_CODES = {NO_DRIFT: 0, DRIFT: 3, NOT_ENOUGH_DATA: 4}
TAG_MODEL_NAME = "mlcycle.model_name"
TAG_MODEL_VERSION = "mlcycle.model_version"
TAG_DECISION = "mlcycle.decision"


class LoggedRows(Protocol):
    """What the serving room's prediction log reader returns (``read_window``)."""

    logged_at: np.ndarray
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
    logged: tuple[float, float] | None = None  # the oldest and newest row's time (the log's)


@dataclass(frozen=True)
class MonitorOutcome:
    served: Served
    result: DriftResult
    report: Path
    run_id: str
    source: str
    logged: tuple[float, float] | None = None  # when the compared rows were logged, if they were

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
    wanted_data = Lineage.from_tags(run.data.tags).processed
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


def checked_log_path(log_path: Path | None) -> None:
    """A log named on purpose must be there (the default may not be yet: nothing served)."""
    if log_path is not None and not log_path.is_file():
        raise MonitorError(
            f"{log_path}: no such prediction log; pass the file `mlcycle serve "
            "--prediction-log` writes to (default data/serving/predictions.sqlite)"
        )


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
    span = (float(logged.logged_at[0]), float(logged.logged_at[-1])) if len(logged) else None
    return Window(images, logged.probabilities, logged.labels, source, span)


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
    images = checked_batch_images(path, images)
    labels = (
        checked_batch_labels(path, labels, len(images), served, reference)
        if labels is not None
        else np.full(len(images), -1)
    )
    images = fitted(images, reference)
    model = mlflow.pyfunc.load_model(f"models:/{served.name}/{served.version}")
    logits = np.asarray(model.predict(images)) if len(images) else np.zeros((0, 0))
    probabilities = softmax(logits, axis=1) if len(images) else logits
    return Window(images, probabilities.astype(np.float32), labels, f"{path}: {len(images)} images")


BATCH_CHANNELS = (1, 3)  # grey or RGB: what the preprocessing converts between


def checked_batch_images(path: Path, images: np.ndarray) -> np.ndarray:
    """A batch's ``images`` as uint8 (N, H, W, C), C grey or RGB; else one error naming them."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in BATCH_CHANNELS:
        raise MonitorError(
            f"{path}: 'images' must be uint8 (N, H, W) or (N, H, W, C) with C 1 (grey) or 3 "
            f"(RGB), got {images.dtype} {images.shape}"
        )
    return images


def checked_batch_labels(
    path: Path, labels: np.ndarray, count: int, served: Served, reference: Reference
) -> np.ndarray:
    """A batch's ``labels`` as class indices of the served version, one per image: a value
    outside its classes is refused by name, never read as "no label" (as -1 is in the log)."""
    classes = len(reference.class_names)
    expected = f"one class index 0-{classes - 1} of {served.name} v{served.version} per image"
    if labels.shape != (count,):
        raise MonitorError(f"{path}: 'labels' must hold {expected}; got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        shown = ", ".join(repr(value) for value in labels[:3].tolist())
        raise MonitorError(
            f"{path}: 'labels' must hold {expected}; got {labels.dtype} values ({shown})"
        )
    outside = np.unique(labels[(labels < 0) | (labels >= classes)])
    if len(outside):
        shown = ", ".join(str(value) for value in outside[:10].tolist())
        raise MonitorError(
            f"{path}: 'labels' holds {shown}{' ...' if len(outside) > 10 else ''}, outside the "
            f"classes; expected {expected}"
        )
    return labels.astype(np.int64)


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
    write_drift_report(
        reference,
        features,
        window.probabilities,
        result,
        report,
        model=f"{served.name} v{served.version}",
    )

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
    if flow_run := _prefect_flow_run_id():
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


def _prefect_flow_run_id() -> str | None:
    """The Prefect flow run this runs in (None outside one); not an MLflow run id."""
    from prefect.runtime import flow_run

    return flow_run.get_id()


def _table_artifact(served: Served, result: DriftResult, report: Path) -> None:
    if _prefect_flow_run_id() is None:
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
    log_path: Path | None = None,
) -> MonitorOutcome:
    """Compare the served version's reference with the live window of the prediction log at
    ``log_path`` (default data/serving/predictions.sqlite), or with ``batch``; publish."""
    log = run_logger("mlcycle.monitor")
    checked_log_path(log_path)
    served = served_version(params)
    reference = served_reference(served)
    if batch is not None:
        current = batch_window(served, reference, batch)
    else:
        current = logged_window(
            params,
            served,
            reference,
            read_log,
            log_path or PREDICTION_LOG,
            window or params.monitor.window,
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
    return MonitorOutcome(served, result, report, run_id, current.source, current.logged)


# One Prefect event per verdict: the training deployment's trigger (prefect.yaml) retrains on
# the drift event, and the UI's Event Feed shows every verdict.
VERDICT_EVENTS = {
    NO_DRIFT: "mlcycle.monitor.ok",
    DRIFT: DRIFT_EVENT,
    NOT_ENOUGH_DATA: "mlcycle.monitor.not-enough-data",
}
RESOURCE_PREFIX = "mlcycle.model"  # a verdict's resource: mlcycle.model.<name>.v<version>
HOW_TO_RETRAIN = (
    "start a Prefect server (`make prefect-ui`), `export PREFECT_API_URL="
    "http://127.0.0.1:4200/api`, `make deploy` and `make worker`"
)


@dataclass(frozen=True)
class VerdictEvent:
    """What :func:`emit_verdict` sends: the event name, its resource and its payload."""

    name: str
    resource: dict[str, str]
    payload: dict[str, object]


def verdict_event(outcome: MonitorOutcome, retraining: str | None = None) -> VerdictEvent:
    """The verdict of ``outcome`` as a Prefect event: resource the served model version,
    payload the summary (decision, a one-line text, rows, what drifted, the numbers).
    ``retraining``: the run already on its way to answer it (the resource's
    ``mlcycle.retrain-pending`` label says "true", and the drift trigger ignores the event)."""
    served, result = outcome.served, outcome.result
    drifted = [check.name for check in result.drifted]
    summary = f"{served.name} v{served.version}: {result.decision} over {result.rows} rows" + (
        f" (drifted: {', '.join(drifted)})" if drifted else ""
    )
    return VerdictEvent(
        name=VERDICT_EVENTS[result.decision],
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}.{served.name}.v{served.version}",
            "prefect.resource.name": f"{served.name} v{served.version}",
            "mlcycle.model.name": served.name,
            "mlcycle.model.version": served.version,
            "mlcycle.model.alias": served.alias,
            RETRAIN_PENDING_LABEL: "true" if retraining else "false",
        },
        payload={
            "decision": result.decision,
            "summary": summary,
            "rows": result.rows,
            "labelled": result.labelled,
            "drifted": drifted,
            "metrics": result.metrics(),
            "source": outcome.source,
            # when the compared rows were logged (seconds since the epoch): what the verdict covers
            "logged_from": outcome.logged[0] if outcome.logged else None,
            "logged_to": outcome.logged[1] if outcome.logged else None,
            "report": str(outcome.report),
            "mlflow_run_id": outcome.run_id,
            "retraining": retraining,
        },
    )


def emit_verdict(params: Params, outcome: MonitorOutcome) -> str:
    """Send the verdict's event to the Prefect API and say, for people, what retrains: on
    drift, the training deployment's drift trigger (an automation on the server), debounced
    by ``monitor.cooldown_hours``; the promotion gate still decides what is served."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    answering = outcome.result.decision == DRIFT and os.environ.get("PREFECT_API_URL")
    retraining = pending_retrain(params.schedule.training_slot) if answering else None
    event = verdict_event(outcome, retraining)
    sent = emit_event(event=event.name, resource=event.resource, payload=event.payload)
    EventsWorker.drain_all(timeout=5)  # delivered before the process may end
    sent_line = f"event {event.name} sent ({sent.id})" if sent else f"event {event.name} not sent"
    if outcome.result.decision != DRIFT:
        return f"no retraining: {outcome.result.decision} ({sent_line})"
    if not params.monitor.retrain_on_drift:
        return f"no retraining: monitor.retrain_on_drift is false ({sent_line})"
    if not os.environ.get("PREFECT_API_URL"):
        return f"drift, but no retraining: no Prefect server with deployments; {HOW_TO_RETRAIN}"
    if retraining:
        return f"drift: {sent_line}; a retraining is already on its way ({retraining})"
    return f"drift: {sent_line}; {drift_trigger_line()}"


def drift_trigger_line() -> str:
    """What the server will do with a drift event: the training deployment's drift trigger,
    or why nothing retrains."""
    from prefect.exceptions import ObjectNotFound

    try:
        triggers = drift_triggers()
    except ObjectNotFound:
        return f"but {TRAINING_DEPLOYMENT} is not deployed, nothing retrains; {HOW_TO_RETRAIN}"
    if not triggers:
        return (
            f"but {TRAINING_DEPLOYMENT} has no drift trigger, nothing retrains: "
            "`mlcycle deployments apply` (make deploy) creates it"
        )
    if not triggers[0].enabled:
        return f"but its trigger '{triggers[0].name}' is disabled (monitor.retrain_on_drift)"
    return (
        f"the trigger '{triggers[0].name}' runs {TRAINING_DEPLOYMENT} unless it ran one within "
        "monitor.cooldown_hours"
    )


monitor_task = task(name="monitor", retries=0)(monitor)
emit_verdict_task = task(name="emit-verdict", retries=1, retry_delay_seconds=5)(emit_verdict)

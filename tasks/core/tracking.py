"""MLflow plumbing shared by the stages, the flow, the registry and serving.

One MLflow run per pipeline run: the flow opens it and hands its id to the stages through
``MLFLOW_RUN_ID``; which run a stage records into is ``tasks.core.stage_run``'s to decide.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.errors import MlcycleError, sqlite_path
from tasks.core.files import exclusive_lock
from tasks.core.lineage import (
    TAG_PARAMS,
    TAG_RUN,
    kept_on_run,
    lineage_tags,
)
from tasks.core.redaction import install_log_redaction, redact, redact_mapping, without_credentials

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


DEFAULT_ARTIFACT_ROOT = Path("mlartifacts")


DEFAULT_EXPERIMENT = "mlcycle"

# What an experiment is for, as the MLflow UI names it ("Machine learning"; its bundle knows
# "custom_model_development" and "genai_development"). The UI of MLflow 3.17 opens every
# experiment in the view its switch (GenAI | Model training) holds, GenAI in a new browser,
# whatever the tag says: the links mlcycle prints name the view (UI_VIEW).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
UI_VIEW = "workflowType=machine_learning"


SERVER_CHECK_TIMEOUT_S = 5.0

MAX_PARAMS_PER_BATCH = 100  # MLflow refuses larger log_batch calls


class TrackingError(MlcycleError):
    """The tracking server or store cannot be used. Its message names the store, and MLflow's
    own messages repeat the URI: any password in it is masked here, once for every exit (the
    console, the run log, the Prefect state)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def as_logged(value: Any) -> str:
    """A param value as MLflow holds it: text, any credential in it masked. Compare a logged
    param with this, not with ``str(value)``: ``select.storage``'s password is not logged."""
    return redact(str(value))


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def connect() -> str:
    """Point MLflow at the configured store and return the experiment id.

    A tracking server that cannot be reached fails here within seconds, instead of after
    MLflow's default retries (minutes).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    # Fail within seconds on a dead server; a user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow prints "View run ... at: <the URI, password and all>" when a run ends; our own
    # commands print the run's link without it.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    install_log_redaction()  # the URI's password is in this process from here on
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    location = None if uri.startswith("http") else DEFAULT_ARTIFACT_ROOT.resolve().as_uri()
    try:
        with one_store_creator(uri):
            return ensure_experiment(
                experiment_name(),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
                artifact_location=location,
            )
    except MlflowException as error:
        raise TrackingError(f"MLflow tracking store {uri}: {error.message}") from None


@contextmanager
def one_store_creator(uri: str) -> Iterator[None]:
    """A SQLite store's first use (MLflow creates and migrates its tables) by one process at a
    time: a monitor run and a training run starting together on a new checkout had one query
    the tables the other was still creating ("no such column: spans.dimension_attributes")."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    with exclusive_lock(database.with_name(f".{database.name}.create-lock")):
        yield


def ensure_experiment(
    name: str, tags: Mapping[str, str] | None = None, artifact_location: str | None = None
) -> str:
    """The id of experiment ``name`` in the current tracking store, created if it is missing
    (with ``tags`` and ``artifact_location``); an existing one gets those of ``tags`` it lacks
    (one made before mlcycle set them: a value someone chose in the UI stays). Two processes
    may create it at once: the loser reads the winner's."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tags = dict(tags or {})
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        for key, value in tags.items():
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except MlflowException:  # created by a concurrent process in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def check_server(uri: str, timeout: float = SERVER_CHECK_TIMEOUT_S) -> None:
    import httpx

    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout, follow_redirects=True)
        if response.status_code == 200:
            return
        reason = f"HTTP {response.status_code}"
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
    raise TrackingError(
        f"MLflow tracking server {uri} cannot be reached ({reason}); start it, or unset "
        f"MLFLOW_TRACKING_URI to track in {DEFAULT_TRACKING_URI}"
    )


@contextmanager
def tracking_errors(action: str) -> Iterator[None]:
    """MLflow failures (a server that went away, an HTTP 5xx) as one line naming what failed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        detail = str(error.message).strip().splitlines()[0][:300]
        raise TrackingError(f"MLflow {tracking_uri()}: could not {action}: {detail}") from None


@dataclass(frozen=True)
class RunTracker:
    """Logs to one MLflow run by id; per-epoch metrics go in one batched call per epoch. A
    tracking server that fails mid-run is one line (TrackingError) naming it and the action."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step or 0) for key, value in metrics.items()]
        with tracking_errors(f"log metrics to run {self.run_id}"):
            MlflowClient().log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        tags = redact_mapping({k: str(v) for k, v in tags.items()})
        with tracking_errors(f"tag run {self.run_id}"):
            MlflowClient().log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_values(self, values: Mapping[str, Any]) -> None:
        """Log plain key -> value params (a trial's choice), each once; a credential in a
        value (``select.storage``'s password) is masked."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with tracking_errors(f"log params to run {self.run_id}"):
            batch = [Param(k, as_logged(v)) for k, v in values.items()]
            for start in range(0, len(batch), MAX_PARAMS_PER_BATCH):
                MlflowClient().log_batch(
                    self.run_id, params=batch[start : start + MAX_PARAMS_PER_BATCH]
                )

    def log_params(self, params: Params) -> None:
        from mlflow.tracking import MlflowClient

        with tracking_errors(f"log params to run {self.run_id}"):
            logged = MlflowClient().get_run(self.run_id).data.params
        self.log_values({k: v for k, v in params.flat().items() if k not in logged})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        with tracking_errors(f"log {path} to run {self.run_id}"):
            MlflowClient().log_artifact(self.run_id, str(path), artifact_path)


def child_run(parent_run_id: str, run_name: str, tags: Mapping[str, str]) -> RunTracker:
    """A new run nested under ``parent_run_id`` (the MLflow UI folds it under its parent), in
    the parent's experiment; the caller ends it with :func:`end_run`."""
    from mlflow.tracking import MlflowClient

    connect()
    client = MlflowClient()
    with tracking_errors(f"open a run under {parent_run_id}"):
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        run = client.create_run(
            experiment_id,
            run_name=run_name,
            tags=redact_mapping({"mlflow.parentRunId": parent_run_id, **lineage_tags(), **tags}),
        )
    return RunTracker(run.info.run_id)


def end_run(run_id: str, status: str = "FINISHED", name: str | None = None) -> None:
    """End a run with ``status``, renamed to ``name`` when given (how it ended, in the run
    table of the MLflow UI)."""
    from mlflow.tracking import MlflowClient

    with tracking_errors(f"end run {run_id}"):
        MlflowClient().set_terminated(run_id, status)
        if name is not None:
            MlflowClient().update_run(run_id, name=name)


def flow_mlflow_run_id() -> str | None:
    """The MLflow run id of the pipeline run a flow hands its stages through ``MLFLOW_RUN_ID``;
    None outside a flow. (Not Prefect's flow-run id: that one is ``TAG_FLOW_RUN``.)"""
    return os.environ.get("MLFLOW_RUN_ID") or None


@contextmanager
def tracked_run(
    params: Params, run_id: str | None = None, run_name: str | None = None
) -> Iterator[RunTracker]:
    """An MLflow run for a stage: marked FAILED if the stage raises (unless the flow owns it).

    - With ``MLFLOW_RUN_ID`` set (the flow's run): log into it and leave it open, even when the
      stage fails; the flow owns it and ends it (FAILED, or KILLED when it was stopped).
    - With ``run_id`` (a finished run to join, as evaluate joins train's): reopen it, end it.
    - Otherwise: a new run, ended when the stage ends.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    client = MlflowClient()
    flows_run = flow_mlflow_run_id()
    run_id = run_id or flows_run
    try:
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            client.get_run(run_id)
            if run_id != flows_run:
                client.update_run(run_id, status="RUNNING")
    except MlflowException as error:
        raise TrackingError(
            f"cannot open MLflow run {run_id or '(new)'} in {tracking_uri()}: {error.message}"
        ) from None
    tracker = RunTracker(run_id)
    try:
        tracker.log_params(params)
        tracker.set_tags(lineage_tags())
        yield tracker
    except BaseException:
        if run_id != flows_run:  # the flow's run is the flow's to end (FAILED or KILLED)
            client.set_terminated(run_id, "FAILED")
        raise
    if run_id != flows_run:
        client.set_terminated(run_id, "FINISHED")


def run_url(run_id: str) -> str:
    """Where to look at a run: the server's UI (without the URI's login: a browser asks for
    it), or ``mlflow ui``'s default address, in the UI's model-training view (``UI_VIEW``)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    base = (
        uri
        if uri.startswith("http")
        else os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    )
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    root = without_credentials(base).rstrip("/")
    return f"{root}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


class ModelVersionNotFound(TrackingError):
    """The registry holds no such version, or no version holds the alias."""


def get_model_version(name: str, version: str | None = None, alias: str | None = None) -> Any:
    """The registry's record of ``version`` of ``name``, or of the one ``alias`` points at, its
    tags completed with the lineage its run keeps (:func:`with_lineage`)."""
    return with_lineage(model_version_record(name, version, alias))


def model_version_record(name: str, version: str | None = None, alias: str | None = None) -> Any:
    """The version's own record, in one request (no lineage from its run): what a poll wants."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        if version is not None:
            return MlflowClient().get_model_version(name, version)
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"MLflow {tracking_uri()}: could not read '{name}': {error.message}"
            ) from None
        wanted = f"version {version}" if version is not None else f"alias '{alias}'"
        raise ModelVersionNotFound(f"'{name}' has no {wanted}; see `mlcycle models`") from None


def with_lineage(details: Any) -> Any:
    """A model version whose tags also hold the lineage that the run it was registered from
    keeps (``kept_on_run``: its Lineage, classes, shapes; and the run's params as
    ``TAG_PARAMS`` JSON). The version's own tags win. TrackingError when that run cannot be
    read."""
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.exceptions import MlflowException
    from mlflow.protos.model_registry_pb2 import ModelVersionTag
    from mlflow.tracking import MlflowClient

    tags = details.tags
    if TAG_RUN not in tags:  # not registered by mlcycle: it has no run to read
        return details
    try:
        run = MlflowClient().get_run(tags[TAG_RUN])
    except MlflowException as error:
        raise TrackingError(
            f"version {details.version} of '{details.name}' keeps its lineage (classes, "
            f"shapes, params) on MLflow run {tags[TAG_RUN]}, which cannot be read: "
            f"{error.message}"
        ) from None
    lineage = run_lineage(run)
    proto = details.to_proto()
    proto.tags.extend(
        ModelVersionTag(key=key, value=value) for key, value in lineage.items() if key not in tags
    )
    return ModelVersion.from_proto(proto)


def run_lineage(run: Any) -> dict[str, str]:
    """The lineage a pipeline run records for the versions registered from it."""
    tags = run.data.tags
    lineage = {k: v for k, v in tags.items() if kept_on_run(k)}
    lineage[TAG_PARAMS] = json.dumps(dict(sorted(run.data.params.items())))
    return lineage

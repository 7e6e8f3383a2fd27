"""Evaluated runs whose model was never registered: a pipeline run that finished its
evaluation and then lost its command (a Prefect outage, a worker killed) before registration.
Whoever notices marks it (``TAG_UNREGISTERED``, why); the next ``mlcycle run`` or ``mlcycle
register`` in its workspace registers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.lineage import (
    TAG_EVALUATED,
    TAG_FLOW_RUN,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    TAG_RUN,
    TAG_UNREGISTERED,
    TAG_WORKSPACE,
)
from tasks.core.redaction import redact
from tasks.core.tracking import connect

UNKNOWN_CAUSE = "its command ended before registering it"
REASON_MAX_CHARS = 500  # a reason tag stays a readable line in the MLflow UI


def is_evaluated(run: Any) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_EVALUATED) == "true"


def model_is_registered(run: Any) -> bool:
    """Whether a model version holds ``run``'s model: registered from this run, or the same
    model file registered from another."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if client.search_model_versions(f"tags.`{TAG_RUN}` = '{run.info.run_id}'"):
        return True
    tags = run.data.tags
    model_md5 = tags.get(TAG_MODEL_MD5)
    if model_md5 is None and tags.get(TAG_MODEL_RUN):
        model_md5 = client.get_run(tags[TAG_MODEL_RUN]).data.tags.get(TAG_MODEL_MD5)
    return bool(model_md5) and bool(
        client.search_model_versions(f"tags.`{TAG_MODEL_MD5}` = '{model_md5}'")
    )


def unregistered_run(workspace: Path | None = None) -> Any | None:
    """The newest pipeline run of ``workspace`` (this one by default), if it finished its
    evaluation but its model was never registered; else None (it failed, was stopped, or was
    registered: a failed or partial run is never registered)."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    where = str((workspace or Path.cwd()).resolve())
    runs = MlflowClient().search_runs(
        [experiment_id],
        f"tags.`{TAG_WORKSPACE}` = '{where}' and tags.`{TAG_FLOW_RUN}` != 'none'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or not is_evaluated(runs[0]) or model_is_registered(runs[0]):
        return None
    return runs[0]


def unregistered_cause(run: Any) -> str:
    return run.data.tags.get(TAG_UNREGISTERED) or UNKNOWN_CAUSE


def mark_unregistered(run_id: str, why: str) -> None:
    """Mark ``run_id`` for the next registration; a mark already there (the first cause)
    stays."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if TAG_UNREGISTERED not in client.get_run(run_id).data.tags:
        client.set_tag(run_id, TAG_UNREGISTERED, redact(why)[:REASON_MAX_CHARS])


def clear_unregistered(run_id: str) -> None:
    """Registered now: the mark goes."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if TAG_UNREGISTERED in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_UNREGISTERED)

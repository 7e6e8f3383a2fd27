"""What a pipeline run is left as when its command is lost (a Prefect outage, Ctrl-C at the wrong
moment) or its process dies (``kill -9``, a power cut): marked so that nothing partial is ever
registered, and an evaluated, unregistered model is registered by the next command."""

from __future__ import annotations

from tasks.core.lineage import TAG_FLOW_RUN, TAG_HOST, TAG_STOPPED
from tasks.core.pending import (
    REASON_MAX_CHARS,
    is_evaluated,
    mark_unregistered,
    model_is_registered,
)
from tasks.core.redaction import redact
from tasks.core.stage_run import find_run
from tasks.core.tracking import connect
from tasks.lifecycle.pipeline import process_tags


def close_orphaned_runs(pid: int, host: str) -> list[str]:
    """Mark KILLED the pipeline runs of this workspace that process ``pid`` on ``host`` left
    RUNNING when it died (a ``kill -9``, a power cut); returns their ids."""
    from mlflow.tracking import MlflowClient

    tags = process_tags(pid)
    if tags[TAG_HOST] != host:
        return []
    experiment_id = connect()
    query = " and ".join(
        ["attributes.status = 'RUNNING'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
    )
    closed = []
    for run in MlflowClient().search_runs([experiment_id], query):
        reason = f"its process (pid {pid}) died; closed by the next mlcycle command"
        MlflowClient().set_tag(run.info.run_id, TAG_STOPPED, reason)
        MlflowClient().set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def settle_run(run_id: str, why: str) -> str:
    """Mark a pipeline run whose command was lost (``why``): KILLED while it still read RUNNING
    (nothing of it is ever registered); marked for the next registration if it finished its
    evaluation unregistered. Says what it holds now, in words."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        client.set_tag(run_id, TAG_STOPPED, redact(why)[:REASON_MAX_CHARS])
        client.set_terminated(run_id, "KILLED")
        return (
            f"MLflow run {run_id} is marked KILLED and nothing was registered; `mlcycle run` "
            "starts again"
        )
    if is_evaluated(run) and not model_is_registered(run):
        mark_unregistered(run_id, why)
        return (
            f"MLflow run {run_id} was evaluated but not registered; `mlcycle register` (or the "
            "next `mlcycle run`) registers it"
        )
    if is_evaluated(run):
        return f"MLflow run {run_id} was evaluated and registered; only deploying it was lost"
    return f"MLflow run {run_id} is {run.info.status}: nothing was registered"


def settle_runs_of_this_process(why: str, since_ms: int) -> str:
    """:func:`settle_run` on the pipeline runs this process started since ``since_ms``."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    query = " and ".join(
        [
            f"attributes.start_time >= {since_ms}",
            *(f"tags.`{k}` = '{v}'" for k, v in process_tags().items()),
        ]
    )
    runs = MlflowClient().search_runs(
        [experiment_id], query, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        return "no MLflow run had started; nothing was registered; `mlcycle run` starts again"
    return "; ".join(settle_run(run.info.run_id, why) for run in runs)


def settle_flow_run(flow_run_id: str, why: str) -> str | None:
    """:func:`settle_run` on the pipeline run of Prefect flow run ``flow_run_id``, if any."""
    run_id = find_run(TAG_FLOW_RUN, flow_run_id)
    return settle_run(run_id, why) if run_id else None

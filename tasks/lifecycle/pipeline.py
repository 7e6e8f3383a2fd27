"""Pipeline bookkeeping: run the DVC stages from Prefect, track the pipeline run, publish results.

Each data stage runs through ``dvc repro --single-item <stage>``, so DVC decides what is stale
and keeps ``dvc.lock`` true; the stage's output is streamed into the Prefect log. Parameter
overrides are written into ``params.yaml`` first, as ``dvc exp run --set-param`` does, so
``dvc status`` agrees with what ran.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from tasks.core.config import AUTO, Params, apply_params
from tasks.core.console import run_logger
from tasks.core.dvc import data_versions, push_data, stage_is_stale
from tasks.core.dvc import reproduce_stage as dvc_reproduce
from tasks.core.errors import retry_unless_user_error
from tasks.core.files import file_md5, read_json
from tasks.core.lineage import (
    TAG_EVALUATED,
    TAG_FLOW_RUN,
    TAG_HOST,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    TAG_PID,
    TAG_REASON,
    TAG_STOPPED,
    TAG_WORKSPACE,
    git_state,
    lineage_tags,
    record_lineage_files,
)
from tasks.core.paths import MODEL_FILE, PROCESSED_DIR, REPORTS_DIR
from tasks.core.pending import REASON_MAX_CHARS
from tasks.core.redaction import redact, redact_mapping, redact_value
from tasks.core.stage_run import find_run
from tasks.core.tracking import RunTracker, connect, run_url
from tasks.stages.evaluate import METRICS_FILE, record_evaluation
from tasks.stages.select import TAG_SELECTION, record_selection, selection_table
from tasks.stages.train import record_training
from tasks.training.choice import SELECTION_FILE, read_choice
from tasks.validation.gate import RAW_REPORT, record_validations, validation_markdown

MANUAL_REASON = "by hand"  # a run nobody said why of: `mlcycle run`, the UI's Run button
SHORT_HASH = 12  # characters of an md5 shown in the run's summary


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    seconds: float


@dataclass(frozen=True)
class PipelineSummary:
    run_id: str
    run_url: str
    model: str
    accuracy: float
    macro_f1: float
    baseline: dict[str, Any] | None
    stages_run: tuple[str, ...]
    stages_skipped: tuple[str, ...]
    data_versions: dict[str, str]
    selection: str | None = None  # how auto chose the model, in a line


def selection_line(params: Params, reports_dir: Path = REPORTS_DIR) -> str | None:
    """``trial 7 of 20 (cnn), val accuracy 0.9815`` when train.model is auto; else None."""
    if params.train.model != AUTO:
        return None
    result = read_json(reports_dir / SELECTION_FILE.name)
    return (
        f"trial {result['winner']['trial']} of {len(result['trials'])} "
        f"({result['winner']['model']}), val accuracy {result['winner_val_accuracy']:.4f}"
    )


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger("mlcycle.pipeline")


def publish_validation() -> None:
    """The data-validation verdicts as a Prefect artifact, with where the Data Docs are."""
    if (REPORTS_DIR / RAW_REPORT.name).is_file():
        create_markdown_artifact(
            key="data-validation",
            markdown=redact(validation_markdown()),
            description="Data validation",
        )


def publish_selection() -> None:
    """The selection's trials as a Prefect table artifact (a fixed model publishes none)."""
    rows = selection_table()
    if rows:
        create_table_artifact(
            key="model-selection",
            table=redact_value(rows),
            description="Model selection (validation split)",
        )


# Stages whose reports the flow publishes as Prefect artifacts, whether they pass or fail.
# Both validation stages write the data-validation report; preprocess publishes it once, with
# the split's verdict beside the raw data's, and validate only when it failed (preprocess
# never runs then): one artifact per run, ran or skipped.
STAGE_PUBLISHERS = {"preprocess": publish_validation, "select": publish_selection}
FAILURE_PUBLISHERS = {"validate": publish_validation}


def reproduce_stage(stage: str, run_id: str | None = None) -> StageResult:
    """``dvc repro --single-item <stage>``, its output streamed into the log.

    ``run_id`` is handed to the stage as ``MLFLOW_RUN_ID`` so it logs into the pipeline's run.
    """
    try:
        result = _reproduce(stage, run_id)
    except BaseException:
        publish_report(stage, {**STAGE_PUBLISHERS, **FAILURE_PUBLISHERS})
        raise
    publish_report(stage, STAGE_PUBLISHERS)
    return result


def publish_report(stage: str, publishers: dict[str, Callable[[], None]]) -> None:
    """The stage's report as a Prefect artifact, if ``publishers`` has one for it and a flow
    runs; a report that cannot be published is a warning, never the stage's outcome."""
    if stage in publishers and flow_run.get_id():
        try:
            publishers[stage]()
        except Exception as error:
            _logger().warning("could not publish the %s report: %s", stage, error)


def _reproduce(stage: str, run_id: str | None) -> StageResult:
    logger = _logger()
    if not stage_is_stale(stage):
        logger.info("stage '%s' is up to date: skipped (DVC found nothing changed)", stage)
        return StageResult(stage, ran=False, seconds=0.0)
    env = dict(os.environ)
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    logger.info("stage '%s' is stale: running it through `dvc repro`", stage)
    started = time.perf_counter()
    for line in dvc_reproduce(stage, env):
        logger.info(line)
    return StageResult(stage, ran=True, seconds=round(time.perf_counter() - started, 2))


def start_pipeline_run(params: Params, reason: str = MANUAL_REASON) -> str:
    """Open the MLflow run the stages log into: params, git state, the Prefect flow-run id,
    why it ran, and the process running it (so that the next command can close it if this
    process dies)."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    flow_run_id = flow_run.get_id()
    run = MlflowClient().create_run(
        experiment_id,
        run_name=f"pipeline-{flow_run.get_name() or time.strftime('%Y%m%d-%H%M%S')}",
        tags=redact_mapping(
            {
                TAG_FLOW_RUN: flow_run_id or "none",
                TAG_REASON: reason[:REASON_MAX_CHARS],
                **git_state(),
                **process_tags(),
            }
        ),
    )
    RunTracker(run.info.run_id).log_params(params)
    _logger().info("MLflow run %s (why: %s)", run_url(run.info.run_id), reason)
    return run.info.run_id


def process_tags(pid: int | None = None) -> dict[str, str]:
    return {
        TAG_PID: str(pid or os.getpid()),
        TAG_HOST: socket.gethostname(),
        TAG_WORKSPACE: str(Path.cwd().resolve()),
    }


def fail_pipeline_run(flow: Any, prefect_flow_run: Any, state: Any) -> None:
    """Prefect ``on_failure``/``on_crashed`` hook: mark this flow run's MLflow run FAILED (a
    step failed) or KILLED (stopped by Ctrl-C or a signal), so nothing is ever registered or
    served from a failed or partial pipeline run."""
    from mlflow.tracking import MlflowClient

    status = "KILLED" if state.is_crashed() else "FAILED"
    try:
        run_id = find_run(TAG_FLOW_RUN, str(prefect_flow_run.id))
        # A FINISHED run was trained and evaluated in full; a later step (registration)
        # failing does not unmake that, and a retry may still register it.
        if run_id and MlflowClient().get_run(run_id).info.status == "RUNNING":
            if status == "KILLED":
                MlflowClient().set_tag(run_id, TAG_STOPPED, redact(state.message or "stopped"))
            MlflowClient().set_terminated(run_id, status)
    except Exception as error:  # a hook must not hide the flow's own failure
        _logger().warning("could not mark the MLflow run %s: %s", status, error)


def finish_pipeline_run(
    run_id: str, params: Params, stages: Sequence[StageResult]
) -> PipelineSummary:
    """Record lineage, fill in results of skipped stages, publish the evaluation artifact."""
    from mlflow.tracking import MlflowClient

    metrics = read_json(METRICS_FILE)
    complete_run_record(run_id)
    MlflowClient().set_terminated(run_id, "FINISHED")
    summary = PipelineSummary(
        run_id=run_id,
        run_url=run_url(run_id),
        model=trained_model(params),
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        baseline=metrics.get("baseline"),
        stages_run=tuple(r.stage for r in stages if r.ran),
        stages_skipped=tuple(r.stage for r in stages if not r.ran),
        data_versions=data_versions(),
        selection=selection_line(params),
    )
    create_markdown_artifact(
        key="evaluation",
        markdown=redact(summary_markdown(summary)),
        description="Test-split evaluation",
    )
    return summary


def complete_run_record(
    run_id: str,
    model_file: Path = MODEL_FILE,
    processed_dir: Path = PROCESSED_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> None:
    """Give the pipeline run its lineage, and the records (each stage's ``record_*``, from its
    files) of the stages it did not execute; one that did left its mark and is not recorded
    twice. Judged by what the run holds: DVC's run-cache may restore a stale stage unexecuted.
    """
    from mlflow.tracking import MlflowClient

    tracker = RunTracker(run_id)
    tracker.set_tags(lineage_tags())
    record_lineage_files(run_id)
    logged = MlflowClient().get_run(run_id).data  # what the stages that executed logged
    tags = logged.tags
    if TAG_MODEL_MD5 not in tags:
        # DVC reused the model: point at a run that logged this very file, not log it again;
        # if no run in this tracking store did, log it here.
        model_run = find_run(TAG_MODEL_MD5, file_md5(model_file))
        if model_run:
            tracker.set_tags({TAG_MODEL_RUN: model_run})
        else:
            record_training(tracker, model_file, processed_dir)
    if TAG_EVALUATED not in tags:
        record_evaluation(tracker, reports_dir)
    if TAG_SELECTION not in tags:  # a search DVC did not re-run: its files, from the workspace
        record_selection(tracker, reports_dir)
    record_validations(tracker, reports_dir, skip_metrics=frozenset(logged.metrics))


def trained_model(params: Params) -> str:
    """The family trained: ``train.model``, or the selected one (``cnn (selected)``)."""
    if params.train.model != AUTO:
        return params.train.model
    return f"{read_choice()[1].model} (selected)"


def summary_markdown(summary: PipelineSummary) -> str:
    baseline = summary.baseline
    header = f"| metric | {summary.model} |" + (
        f" baseline ({baseline['model']}) |" if baseline else ""
    )
    rule = "| --- | --- |" + (" --- |" if baseline else "")
    rows = [
        f"| accuracy | {summary.accuracy:.4f} |"
        + (f" {baseline['accuracy']:.4f} |" if baseline else ""),
        f"| macro-F1 | {summary.macro_f1:.4f} |"
        + (f" {baseline['macro_f1']:.4f} |" if baseline else ""),
    ]
    versions = ", ".join(
        f"`{path}` {md5[:SHORT_HASH]}" for path, md5 in summary.data_versions.items()
    )
    return "\n".join(
        [
            "## Test-split evaluation",
            "",
            header,
            rule,
            *rows,
            "",
            f"MLflow run: [{summary.run_id}]({summary.run_url})",
            "",
            f"Stages run: {', '.join(summary.stages_run) or 'none'}; "
            f"skipped (unchanged): {', '.join(summary.stages_skipped) or 'none'}",
            "",
            f"Data versions (DVC): {versions or 'unknown'}",
        ]
    )


apply_params_task = task(name="apply-params")(apply_params)
reproduce_stage_task = task(name="dvc-repro", retries=0, task_run_name="dvc-repro-{stage}")(
    reproduce_stage
)
push_data_task = task(
    name="dvc-push", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error
)(push_data)
start_pipeline_run_task = task(
    name="start-mlflow-run",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_unless_user_error,
)(start_pipeline_run)
finish_pipeline_run_task = task(name="finish-mlflow-run")(finish_pipeline_run)

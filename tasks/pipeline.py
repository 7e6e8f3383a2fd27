"""The Prefect side of the pipeline: run DVC stages, track the pipeline run, publish results.

Each data stage runs through ``dvc repro --single-item <stage>``, so DVC decides what is stale
and keeps ``dvc.lock`` true; the stage's output is streamed into the Prefect log. Parameter
overrides are written into ``params.yaml`` first, as ``dvc exp run --set-param`` does, so
``dvc status`` agrees with what ran.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.artifacts import atomic_path, file_md5, read_json, read_split
from tasks.config import (
    MODEL_FILE,
    PARAMS_FILE,
    PROCESSED_DIR,
    REPORTS_DIR,
    MlcycleError,
    Params,
    load_params,
    retry_unless_user_error,
    run_logger,
)
from tasks.deploy import Deployment
from tasks.evaluate import METRICS_FILE, record_evaluation
from tasks.model_io import load_model, log_model
from tasks.registry import Registration
from tasks.tracking import (
    TAG_EVALUATED,
    TAG_FLOW_RUN,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    RunTracker,
    connect,
    data_versions,
    find_run,
    git_state,
    lineage_tags,
    record_lineage_files,
    run_url,
)
from tasks.validate import RAW_REPORT, record_validations, validation_markdown


class StageFailed(MlcycleError):
    """A DVC stage exited non-zero."""


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
    registration: Registration | None = None  # filled in by the register step
    deployment: Deployment | None = None  # filled in by the deploy step


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger("mlcycle.pipeline")


def apply_params(params: Params | None, path: Path = PARAMS_FILE) -> Params:
    """Make ``params.yaml`` hold ``params`` (None: keep the file), changing only what differs.

    Comments and layout survive; the changed keys are logged.
    """
    current = load_params(path)
    if params is None or params == current:
        return current
    from ruamel.yaml import YAML

    old, new = current.flat(), params.flat()
    changed = {key: new[key] for key in new if new[key] != old[key]}
    yaml = YAML()  # round-trip mode: keeps comments and key order
    yaml.representer.add_representer(  # write None as `null`, as the file spells it
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    tree = yaml.load(path.read_text())
    for key, value in changed.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = _flow_style(value)
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        yaml.dump(tree, handle)
    for key, value in changed.items():
        _logger().info("params.yaml: %s %r -> %r", key, old[key], value)
    return load_params(path)


def _flow_style(value: Any) -> Any:
    """Lists as ``[8, 16]`` on one line, as params.yaml writes them."""
    if not isinstance(value, list):
        return value
    from ruamel.yaml.comments import CommentedSeq

    sequence = CommentedSeq(value)
    sequence.fa.set_flow_style()
    return sequence


def stage_is_stale(stage: str) -> bool:
    """Whether DVC would run this stage now (changed deps, params or missing outputs)."""
    from dvc.repo import Repo

    with Repo() as repo:
        return bool(repo.status(targets=[stage]))


def publish_validation() -> None:
    """The data-validation verdicts as a Prefect artifact, with where the Data Docs are."""
    if (REPORTS_DIR / RAW_REPORT.name).is_file():
        create_markdown_artifact(
            key="data-validation", markdown=validation_markdown(), description="Data validation"
        )


# Stages whose reports the flow publishes as Prefect artifacts, whether they pass or fail.
STAGE_PUBLISHERS = {"validate": publish_validation, "preprocess": publish_validation}


def reproduce_stage(stage: str, run_id: str | None = None) -> StageResult:
    """``dvc repro --single-item <stage>``, its output streamed into the log.

    ``run_id`` is handed to the stage as ``MLFLOW_RUN_ID`` so it logs into the pipeline's run.
    """
    try:
        return _reproduce(stage, run_id)
    finally:
        if stage in STAGE_PUBLISHERS and flow_run.get_id():
            try:
                STAGE_PUBLISHERS[stage]()
            except Exception as error:  # a report must never hide the stage's own outcome
                _logger().warning("could not publish the %s report: %s", stage, error)


def _reproduce(stage: str, run_id: str | None) -> StageResult:
    logger = _logger()
    if not stage_is_stale(stage):
        logger.info("stage '%s' is up to date: skipped (DVC found nothing changed)", stage)
        return StageResult(stage, ran=False, seconds=0.0)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # dvc.yaml says `python -m ...`: make that the interpreter running this flow.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    logger.info("stage '%s' is stale: running it through `dvc repro`", stage)
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=5)
    with subprocess.Popen(
        # -q: DVC's own hints (git add ..., dvc push ...) are noise here; errors still show.
        [sys.executable, "-m", "dvc", "repro", "--single-item", "--quiet", stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
    if process.returncode != 0:
        detail = next((line for line in reversed(tail) if line.startswith("error:")), None)
        reason = (
            detail.removeprefix("error: ")
            if detail
            else f"see the log above (last line: {tail[-1]})"
            if tail
            else "no output"
        )
        raise StageFailed(f"stage '{stage}' failed: {reason}")
    return StageResult(stage, ran=True, seconds=round(time.perf_counter() - started, 2))


def push_data() -> int:
    """Send the DVC-tracked outputs to the default remote; returns how many files moved."""
    from dvc.repo import Repo

    with Repo() as repo:
        if not repo.config["core"].get("remote"):
            _logger().info("dvc push: no default remote configured, data stays local")
            return 0
        pushed = repo.push()
    _logger().info(
        "dvc push: %d file(s) sent to remote '%s'", pushed, repo.config["core"]["remote"]
    )
    return pushed


def start_pipeline_run(params: Params) -> str:
    """Open the MLflow run the stages log into: params, git state, the Prefect flow-run id."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    flow_run_id = flow_run.get_id()
    run = MlflowClient().create_run(
        experiment_id,
        run_name=f"pipeline-{flow_run.get_name() or time.strftime('%Y%m%d-%H%M%S')}",
        tags={TAG_FLOW_RUN: flow_run_id or "none", **git_state()},
    )
    RunTracker(run.info.run_id).log_params(params)
    _logger().info("MLflow run %s", run_url(run.info.run_id))
    return run.info.run_id


def fail_pipeline_run(flow: Any, prefect_flow_run: Any, state: Any) -> None:
    """Prefect ``on_failure``/``on_crashed`` hook: mark this flow run's MLflow run FAILED, so
    nothing is ever registered or served from a failed or partial pipeline run."""
    from mlflow.tracking import MlflowClient

    try:
        run_id = find_run(TAG_FLOW_RUN, str(prefect_flow_run.id))
        # A FINISHED run was trained and evaluated in full; a later step (registration)
        # failing does not unmake that, and a retry may still register it.
        if run_id and MlflowClient().get_run(run_id).info.status == "RUNNING":
            MlflowClient().set_terminated(run_id, "FAILED")
    except Exception as error:  # a hook must not hide the flow's own failure
        _logger().warning("could not mark the MLflow run FAILED: %s", error)


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
        model=params.train.model,
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        baseline=metrics.get("baseline"),
        stages_run=tuple(r.stage for r in stages if r.ran),
        stages_skipped=tuple(r.stage for r in stages if not r.ran),
        data_versions=data_versions(),
    )
    create_markdown_artifact(
        key="evaluation", markdown=summary_markdown(summary), description="Test-split evaluation"
    )
    return summary


def complete_run_record(
    run_id: str,
    model_file: Path = MODEL_FILE,
    processed_dir: Path = PROCESSED_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> None:
    """Give the pipeline run its lineage, and what the stages it did not execute would have
    logged. Judged by what the run holds, not by which stages were invoked: a stale stage can
    still be restored from DVC's run-cache without executing.
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
            model, _ = load_model(model_file)
            log_model(run_id, model, read_split(processed_dir, "val")[0], model_file)
    if TAG_EVALUATED not in tags:
        record_evaluation(tracker, reports_dir)
    record_validations(tracker, reports_dir, skip_metrics=frozenset(logged.metrics))


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
    versions = ", ".join(f"`{path}` {md5[:12]}" for path, md5 in summary.data_versions.items())
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

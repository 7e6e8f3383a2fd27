"""The training pipeline flow: the DVC stages in order, the run's bookkeeping, registration
and deployment.

Wiring only; every step is a task from ``tasks/``. Run it with ``mlcycle run`` or
``python -m flows.training``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect.runtime import flow_run as prefect_flow_run

from flows.registry import register_model
from tasks.core.config import Params, load_params
from tasks.core.console import flow_without_secrets, run_logger
from tasks.core.errors import hide_user_error_tracebacks
from tasks.core.prediction_log.export import export_feedback_task
from tasks.lifecycle.deploy import Deployment, deploy_task, nothing_to_deploy_task
from tasks.lifecycle.pipeline import (
    MANUAL_REASON,
    PipelineSummary,
    apply_params_task,
    fail_pipeline_run,
    finish_pipeline_run_task,
    push_data_task,
    reproduce_stage_task,
    start_pipeline_run_task,
)
from tasks.lifecycle.workspace import training_turn
from tasks.registry.gate import Registration
from tasks.registry.tasks import find_unregistered_task, publish_registration
from tasks.stages import DATA_STAGES

hide_user_error_tracebacks()  # bad input reads as one line in the flow log, as on the console


@dataclass(frozen=True)
class PipelineOutcome:
    """What one pipeline run did: the evaluated run, its registration, its deployment."""

    summary: PipelineSummary
    registration: Registration
    deployment: Deployment
    recovered: Registration | None = None  # a run a lost command had left unregistered
    flow_run_id: str | None = None  # where the run can be browsed in the Prefect UI


def registered(run_id: str, params: Params | None) -> Registration:
    """The ``register-model`` subflow's registration, read from the subflow's final state.

    A subflow's plain return value is recorded as a ``flow_run`` input of every task it is
    passed to (deploy), and Prefect 3.8's UI cannot read such an input: the run's Task Runs tab
    then lists nothing ("Invalid TaskInputResponse" in the browser's console). Read from the
    state, the same values reach the tasks unrecorded; a failed registration still raises."""
    return register_model(run_id=run_id, params=params, return_state=True).result()


@flow_without_secrets(
    name="training-pipeline",
    description="Collect, validate, preprocess, train, evaluate, register and deploy a model.",
    on_failure=[fail_pipeline_run],
    on_crashed=[fail_pipeline_run],
)
def training_pipeline(params: Params | None = None, reason: str = MANUAL_REASON) -> PipelineOutcome:
    """``params``: the whole of params.yaml; left empty, the file is used as it is.
    ``reason``: why it runs (the schedule and the drift trigger of prefect.yaml say so); the
    MLflow run's ``mlcycle.reason`` tag."""
    schedule = (params or load_params()).schedule
    say = run_logger("mlcycle.pipeline").warning
    with training_turn(
        "training-pipeline flow", schedule.training_slot, schedule.slot_wait_minutes * 60, say
    ):
        # first, the model of a run whose command was lost after its evaluation: this run
        # may change what the workspace holds
        unregistered = find_unregistered_task()
        recovered = registered(unregistered, params) if unregistered else None
        params = apply_params_task(params)
        if params.collect.feedback:  # before collect, so DVC sees the labelled images change
            export_feedback_task()
        run_id = start_pipeline_run_task(params, reason)
        stages = [reproduce_stage_task(stage, run_id) for stage in DATA_STAGES]
        push_data_task()
        summary = finish_pipeline_run_task(run_id, params, stages)
        registration = registered(run_id, params)
        # the pipeline run's own artifact too, not only its register-model subflow's
        publish_registration(registration, params.registry)
        deployment = (
            deploy_task(registration.version, params.serve)
            if registration.promoted
            else nothing_to_deploy_task(registration.champion, params.serve)
        )
    return PipelineOutcome(summary, registration, deployment, recovered, prefect_flow_run.id)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))

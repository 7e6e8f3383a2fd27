"""The registry flows: ``register-model`` (register the evaluated model, move its aliases) and
the moves by hand, ``promote-model`` and ``rollback-model``, so each leaves a Prefect run.

Wiring only; the logic is in ``tasks/registry/``. The training pipeline runs
``register-model`` as its last step; ``mlcycle register`` runs it on its own after a plain
``dvc repro``; ``mlcycle promote`` and ``mlcycle rollback`` run the other two.
"""

from __future__ import annotations

from pathlib import Path

from prefect.transactions import transaction

from tasks.core.config import Params, RegistryParams, load_params
from tasks.core.console import flow_without_secrets
from tasks.core.errors import hide_user_error_tracebacks
from tasks.core.paths import PARAMS_FILE
from tasks.lifecycle.pipeline import push_data_task
from tasks.registry.gate import Registration
from tasks.registry.tasks import (
    check_version_task,
    create_version_task,
    find_candidate_task,
    force_promote_task,
    promote_if_better_task,
    promote_task,
    publish_registration_task,
    rollback_task,
)

hide_user_error_tracebacks()


@flow_without_secrets(
    name="register-model", description="Register the evaluated model; promote it if better."
)
def register_model(
    run_id: str | None = None, params: Params | None = None, workspace: Path = Path()
) -> Registration:
    """``run_id``: the pipeline run to register; left empty, the newest finished run that
    evaluated the workspace's model. ``workspace``: the project folder (a DVC repository)
    whose model, data and ``params.yaml`` are registered; the current one by default."""
    params = params or load_params(workspace / PARAMS_FILE)
    candidate = find_candidate_task(run_id, workspace)
    push_data_task(workspace)
    # Anything failing after the version exists rolls it back: it is marked failed, unaliased.
    with transaction():
        version = create_version_task(candidate, params.registry.model_name, workspace)
        check_version_task(version, params.registry, workspace)
        registration = promote_if_better_task(candidate, version, params.registry, workspace)
    publish_registration_task(registration, params.registry)
    return registration


@flow_without_secrets(
    name="promote-model", description="Move `champion` to a version by hand (load-checked)."
)
def promote_model(
    name: str, version: str, policy: RegistryParams, force: bool = False
) -> str | None:
    """Returns the version that was champion before. ``policy``: ``registry`` of params.yaml
    (the load-back check scores ``check_samples`` test images). ``force``: even if its
    classes or input shape differ from the champion's."""
    move = force_promote_task if force else promote_task
    return move(name, version, policy)


@flow_without_secrets(
    name="rollback-model", description="Move `champion` back to the version it replaced."
)
def rollback_model(name: str, policy: RegistryParams) -> tuple[str, str]:
    """Returns (the champion rolled back from, the champion now)."""
    return rollback_task(name, policy)

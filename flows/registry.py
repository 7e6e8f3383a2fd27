"""The ``register-model`` flow: register the evaluated model and move its aliases.

Wiring only; the logic is in ``tasks/registry.py``. The training pipeline runs it as its last
step; ``mlcycle register`` runs it on its own after a plain ``dvc repro``.
"""

from __future__ import annotations

from prefect import flow
from prefect.transactions import transaction

from tasks.config import Params, hide_user_error_tracebacks, load_params
from tasks.pipeline import push_data_task
from tasks.registry import (
    Registration,
    check_version_task,
    create_version_task,
    find_candidate_task,
    promote_if_better_task,
    publish_registration_task,
)

hide_user_error_tracebacks()


@flow(name="register-model", description="Register the evaluated model; promote it if better.")
def register_model(run_id: str | None = None, params: Params | None = None) -> Registration:
    """``run_id``: the pipeline run to register; left empty, the newest finished run that
    evaluated the workspace's model."""
    params = params or load_params()
    candidate = find_candidate_task(run_id)
    push_data_task()
    # Anything failing after the version exists rolls it back: it is marked failed, unaliased.
    with transaction():
        version = create_version_task(candidate, params.registry.model_name)
        check_version_task(version, params.registry)
        registration = promote_if_better_task(candidate, version, params.registry)
    publish_registration_task(registration, params.registry)
    return registration

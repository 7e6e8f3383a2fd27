"""The registry's Prefect tasks: thin wrappers the ``register-model`` flow wires together."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.transactions import get_transaction

from tasks.core.config import RegistryParams
from tasks.core.console import run_logger
from tasks.core.paths import MODEL_FILE, PROCESSED_DIR, RAW_DIR
from tasks.core.pending import (
    clear_unregistered,
    mark_unregistered,
    unregistered_cause,
    unregistered_run,
)
from tasks.core.redaction import redact
from tasks.registry.candidate import Candidate, find_candidate
from tasks.registry.check import check_registered
from tasks.registry.gate import Registration, promote_if_better
from tasks.registry.manual import force_promote, promote, rollback
from tasks.registry.store import SCORES, RegistryError, log
from tasks.registry.versions import RegisteredVersion, create_version, retire_version


def registration_markdown(registration: Registration, policy: RegistryParams) -> str:
    rows = [
        f"| {m} | {registration.candidate_metrics[m]:.4f} | "
        + (f"{registration.champion_metrics[m]:.4f} |" if registration.champion_metrics else "- |")
        for m in SCORES
    ]
    outcome = "promoted to **champion**" if registration.promoted else "kept as **challenger**"
    return "\n".join(
        [
            f"## Model registry: {registration.name} v{registration.version}",
            "",
            f"Version {registration.version} {outcome}: {registration.reason}.",
            "",
            f"Champion now: {'v' + registration.champion if registration.champion else 'none'}. "
            f"Gate: `{policy.metric}` must improve by {policy.min_improvement}, guards "
            f"{', '.join(policy.guard_metrics) or 'none'}, floor {policy.min_score}.",
            "",
            "| metric (same test split) | candidate | previous champion |",
            "| --- | --- | --- |",
            *rows,
        ]
    )


_ROLLBACK_KEY = "registered_version"


@task(name="find-unregistered-run")
def find_unregistered_task() -> str | None:
    """The newest pipeline run of this workspace if it finished its evaluation but was never
    registered (its command was lost) and can be registered now; else None, saying why not."""
    run = unregistered_run()
    if run is None:
        return None
    run_id = run.info.run_id
    try:
        find_candidate(run_id)
    except RegistryError as error:
        run_logger(log.name).warning(
            "register: run %s was evaluated but never registered (%s); it cannot be now: %s",
            run_id,
            unregistered_cause(run),
            error,
        )
        return None
    mark_unregistered(run_id, unregistered_cause(run))  # the registration says so
    return run_id


@task(name="find-candidate")
def find_candidate_task(run_id: str | None = None, root: Path = Path()) -> Candidate:
    candidate = find_candidate(run_id, root / MODEL_FILE, root, root / RAW_DIR)
    if candidate.unregistered:
        run_logger(log.name).warning(
            "register: run %s was evaluated but never registered (%s): registering it now",
            candidate.run_id,
            candidate.unregistered,
        )
    run_logger(log.name).info(
        "register: run %s, test accuracy %.4f, macro-F1 %.4f",
        candidate.run_id,
        candidate.metrics["accuracy"],
        candidate.metrics["macro_f1"],
    )
    return candidate


@task(name="create-model-version")
def create_version_task(candidate: Candidate, name: str, root: Path = Path()) -> RegisteredVersion:
    registered = create_version(candidate, name, root)
    if registered.created and (txn := get_transaction()) is not None:
        txn.set(_ROLLBACK_KEY, registered)  # what the rollback hook undoes
    return registered


@create_version_task.on_rollback
def _retire_on_rollback(txn: Any) -> None:
    registered: RegisteredVersion | None = txn.get(_ROLLBACK_KEY, None)
    if registered is not None:
        retire_version(
            registered.name,
            registered.version,
            "its registration failed after the version was created (see the flow log)",
        )


@task(name="check-model-version")
def check_version_task(
    registered: RegisteredVersion, policy: RegistryParams, root: Path = Path()
) -> None:
    check_registered(registered, policy, root / MODEL_FILE, root / PROCESSED_DIR)


@task(name="promote-if-better")
def promote_if_better_task(
    candidate: Candidate, registered: RegisteredVersion, policy: RegistryParams, root: Path = Path()
) -> Registration:
    registration = promote_if_better(candidate, registered, policy, root / PROCESSED_DIR)
    if candidate.unregistered:
        clear_unregistered(candidate.run_id)
        registration = replace(registration, recovered=candidate.unregistered)
    run_logger(log.name).info(
        "register: %s v%s %s: %s",
        registration.name,
        registration.version,
        "promoted to champion" if registration.promoted else "not promoted",
        registration.reason,
    )
    return registration


def publish_registration(registration: Registration, policy: RegistryParams) -> None:
    """The ``model-registration`` artifact, on the run this is called in: a task's (and so its
    flow run's) inside a task, the flow run's own when a flow calls it. The version is already
    registered: an artifact that cannot be written (the Prefect API lost) is a warning, never
    a failed run before its deploy step."""
    from prefect.artifacts import create_markdown_artifact

    markdown = redact(registration_markdown(registration, policy))
    try:
        create_markdown_artifact(
            key="model-registration",
            markdown=markdown,
            description=f"{registration.name} v{registration.version}",
        )
    except Exception as error:
        run_logger(log.name).warning("could not publish the model-registration report: %s", error)


publish_registration_task = task(name="publish-registration")(publish_registration)


@task(name="promote")
def promote_task(name: str, version: str, policy: RegistryParams) -> str | None:
    previous = promote(name, version, policy)
    run_logger(log.name).info("%s: champion is now version %s (was %s)", name, version, previous)
    return previous


@task(name="force-promote")
def force_promote_task(name: str, version: str, policy: RegistryParams) -> str | None:
    previous = force_promote(name, version, policy)
    run_logger(log.name).info(
        "%s: champion is now version %s (was %s), forced", name, version, previous
    )
    return previous


@task(name="rollback")
def rollback_task(name: str, policy: RegistryParams) -> tuple[str, str]:
    current, previous = rollback(name, policy)
    run_logger(log.name).info("%s: champion rolled back from v%s to v%s", name, current, previous)
    return current, previous

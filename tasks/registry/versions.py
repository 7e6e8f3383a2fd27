"""Model versions: create one per model file (never twice), retire a failed one, list them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.lineage import (
    MODEL_SPEC_TAGS,
    TAG_CHECK,
    TAG_DECISION,
    TAG_FAMILY,
    TAG_MODEL_MD5,
    TAG_PARAMS,
    TAG_PREVIOUS_CHAMPION,
    UNKNOWN,
    Lineage,
    kept_on_run,
    record_lineage_files,
)
from tasks.core.paths import DVC_LOCK, PARAMS_FILE
from tasks.core.redaction import redact
from tasks.core.tracking import (
    RunTracker,
    TrackingError,
    connect,
    tracking_errors,
    with_lineage,
)
from tasks.registry.candidate import Candidate
from tasks.registry.lock import registry_lock
from tasks.registry.store import (
    CHAMPION,
    CHECK_FAILED,
    CHECK_PENDING,
    DECISION_PENDING,
    NOT_SERVED,
    SCORES,
    RegistryError,
    alias_map,
    client,
    log,
)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    created: bool  # False: this model file was registered before and is reused


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    created: str
    family: str  # the model family (cnn, resnet ...); "" for a version that did not record it
    accuracy: float | None
    macro_f1: float | None
    check: str
    data: str  # DVC hash of data/processed
    commit: str
    decision: str


def create_version(candidate: Candidate, name: str, root: Path = Path()) -> RegisteredVersion:
    """Register the candidate's model under ``name``, or find the version that already holds it.

    A retry of the same pipeline run, or a run that reused the same model file, gets the
    existing version back; its load check runs again. The version holds the few tags a person
    reads and the ones that prove its identity; its lineage stays on its run
    (:func:`version_tags`), with the ``dvc.lock`` and ``params.yaml`` of the workspace at
    ``root``.
    """
    from mlflow.exceptions import MlflowException

    api = client()
    # Under the lock: two registrations of one model file at once must not both create.
    with tracking_errors(f"register a version of '{name}'"), registry_lock(name):
        record_lineage_files(candidate.run_id, root / DVC_LOCK, root / PARAMS_FILE)
        existing = api.search_model_versions(
            f"name = '{name}' and tags.`{TAG_MODEL_MD5}` = '{candidate.model_md5}'"
        )
        if existing:
            version = str(max(existing, key=lambda v: int(v.version)).version)
            log.info(
                "register: this model is already version %s of '%s'; reusing it", version, name
            )
            return RegisteredVersion(name, version, created=False)
        try:
            api.create_registered_model(
                name,
                description="Trained by the mlcycle pipeline; its aliases decide what is served.",
            )
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        RunTracker(candidate.run_id).set_tags(
            {key: candidate.tags[key] for key in MODEL_SPEC_TAGS if key in candidate.tags}
        )
        created = api.create_model_version(
            name,
            source=f"models:/{candidate.model_id}",
            run_id=candidate.model_run_id,
            tags=version_tags(candidate.tags),
            description=f"Registered from MLflow run {candidate.run_id}; load-back check pending.",
            model_id=candidate.model_id,
        )
    log.info("register: created version %s of '%s'", created.version, name)
    return RegisteredVersion(name, str(created.version), created=True)


def version_tags(record: dict[str, str]) -> dict[str, str]:
    """The tags a new version carries itself: a candidate's record less the lineage its run
    keeps (params, data hashes, commit, classes and shapes: long values nobody reads in the
    registry's version list), its load check and the gate's decision pending. The MLflow UI
    lists them in this order in its version list: the ones a person reads first."""
    own = {
        key: value for key, value in record.items() if key != TAG_PARAMS and not kept_on_run(key)
    }
    family = {TAG_FAMILY: own.pop(TAG_FAMILY)} if TAG_FAMILY in own else {}
    return {**family, TAG_CHECK: CHECK_PENDING, TAG_DECISION: DECISION_PENDING, **own}


def retire_version(name: str, version: str, reason: str) -> None:
    """Undo a registration that did not complete: no alias may point at this version.

    ``champion``, if it got that far, goes back to the version it replaced."""
    api = client()
    with tracking_errors(f"retire version {version} of '{name}'"), registry_lock(name):
        previous = api.get_model_version(name, version).tags.get(TAG_PREVIOUS_CHAMPION)
        for alias, holder in alias_map(name).items():
            if holder != version:
                continue  # moved on by someone else meanwhile: theirs, not ours to undo
            if alias == CHAMPION and previous:
                api.set_registered_model_alias(name, CHAMPION, previous)
            else:
                api.delete_registered_model_alias(name, alias)
        api.set_model_version_tag(name, version, TAG_CHECK, CHECK_FAILED)
        api.set_model_version_tag(name, version, TAG_DECISION, NOT_SERVED)
        api.update_model_version(name, version, description=f"Not served: {redact(reason)}")
    log.warning("register: version %s of '%s' retired: %s", version, name, reason)


def list_versions(name: str) -> list[VersionRow]:
    from mlflow.exceptions import MlflowException

    connect()
    api = client()
    with tracking_errors(f"list the versions of '{name}'"):
        try:
            model = api.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"no registered model '{name}' yet; run `mlcycle run`"
                ) from None
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = api.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    return [version_row(v, by_version.get(str(v.version), [])) for v in versions]


def version_row(version: Any, aliases: list[str]) -> VersionRow:
    """One line of ``mlcycle models``: a version's tags, with the lineage its run keeps."""
    tags = _with_run_lineage(version)
    scores = {key: float(tags[key]) for key in SCORES if key in tags}
    lineage = Lineage.from_tags(tags)
    return VersionRow(
        version=str(version.version),
        aliases=tuple(sorted(aliases)),
        created=time.strftime("%Y-%m-%d %H:%M", time.localtime(version.creation_timestamp / 1000)),
        family=tags.get(TAG_FAMILY, ""),
        accuracy=scores.get("accuracy"),
        macro_f1=scores.get("macro_f1"),
        check=tags.get(TAG_CHECK, UNKNOWN),
        data=lineage.processed or UNKNOWN,
        commit=lineage.commit + ("+dirty" if lineage.dirty else ""),
        decision=tags.get(TAG_DECISION, ""),
    )


def _with_run_lineage(version: Any) -> dict[str, str]:
    """A version's tags with its run's lineage; its own tags alone when that run is gone."""
    try:
        return dict(with_lineage(version).tags)
    except TrackingError as error:
        log.warning("models: %s", error)
        return dict(version.tags)

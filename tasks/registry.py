"""register: put an evaluated model in the MLflow Model Registry and decide which one is served.

The steps, each a task of the ``register-model`` flow (inside one Prefect transaction):

1. :func:`find_candidate`: the finished, evaluated pipeline run behind the workspace model, and a
   check that the workspace data is the data it was evaluated on.
2. :func:`create_version`: a version with the lineage tags and the ``pending`` load check; a
   model file that is already registered is reused, never registered twice.
3. :func:`check_version`: load ``models:/<name>/<version>`` back and score test images; they must
   match the local model's scores, or the version is marked ``failed`` and gets no alias.
4. :func:`promote_if_better`: under the registry lock, ``challenger`` moves to the version, the
   champion is scored on the same test split, and ``champion`` moves only if the gate says so.

``mlcycle promote`` / ``rollback`` move ``champion`` by hand with the same load-back check;
``mlcycle restore`` brings back the exact data a version was trained on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.transactions import get_transaction

from tasks.artifacts import ImageDataset, atomic_path, file_md5, read_json, read_split
from tasks.config import (
    MODEL_FILE,
    PARAMS_FILE,
    PROCESSED_DIR,
    RAW_DIR,
    MlcycleError,
    RegistryParams,
    run_logger,
)
from tasks.tracking import (
    DVC_LOCK,
    LINEAGE_DIR,
    TAG_DVC_PREFIX,
    TAG_EVALUATED,
    TAG_FLOW_RUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    connect,
    data_versions,
    git_state,
    record_lineage_files,
    tracking_errors,
)

log = logging.getLogger("mlcycle.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"

# Model version tags, beside the lineage tags copied from the run (git, DVC hashes, flow run).
TAG_RUN = "mlcycle.mlflow_run_id"
TAG_PARAMS = "mlcycle.params"
TAG_CLASS_NAMES = "mlcycle.class_names"
TAG_INPUT_SHAPE = "mlcycle.input_shape"  # what the network takes (after preprocess)
TAG_RAW_SHAPE = "mlcycle.raw_shape"  # one image as data/raw stores it (what clients send)
TAG_METRIC_PREFIX = "mlcycle.test_"
TAG_CHECK = "mlcycle.load_check"  # pending | passed | failed
TAG_PREVIOUS_CHAMPION = "mlcycle.previous_champion"
TAG_DECISION = "mlcycle.promotion"

CHECK_PENDING, CHECK_PASSED, CHECK_FAILED = "pending", "passed", "failed"
SCORES = ("accuracy", "macro_f1")
LOCK_SUFFIX = ".registry-lock"
LOCK_WAIT_S = 660.0
LOCK_STALE_S = 600.0  # the held section takes seconds (minutes for a huge test split)
TOLERANCE = 1e-9  # metric comparisons: 0.99 - 0.98 must count as 0.01


class RegistryError(MlcycleError):
    """The registry cannot do what was asked (nothing to register, unknown version ...)."""


class LoadCheckFailed(RegistryError):
    """A registered version cannot be loaded back, or scores differently from the local model."""


@dataclass(frozen=True)
class Candidate:
    """An evaluated pipeline run and the model it evaluated, ready to register."""

    run_id: str
    model_run_id: str  # the run that logged the model (the same run unless DVC reused it)
    model_id: str  # MLflow logged model, loadable as models:/<model_id>
    model_md5: str
    metrics: dict[str, float]  # accuracy and macro_f1 on the test split
    tags: dict[str, str]  # lineage for the model version


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    created: bool  # False: this model file was registered before and is reused


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    promoted: bool
    reason: str
    champion: str | None  # the version serving as champion afterwards
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None  # the previous champion, on the same test split


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    created: str
    accuracy: float | None
    macro_f1: float | None
    check: str
    data: str  # DVC hash of data/processed
    commit: str
    decision: str


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def alias_map(name: str) -> dict[str, str]:
    """Alias -> version number (as a string: MLflow hands back ints or strings by backend)."""
    return {alias: str(v) for alias, v in _client().get_registered_model(name).aliases.items()}


# --- 1. the candidate --------------------------------------------------------------------------


def find_candidate(
    run_id: str | None = None,
    model_file: Path = MODEL_FILE,
    lock_path: Path = DVC_LOCK,
    raw_dir: Path = RAW_DIR,
    params_path: Path | None = None,
) -> Candidate:
    """The finished, evaluated run whose model is ``model_file`` (newest, unless ``run_id``).

    Refuses a run that failed, is still running or was never evaluated, and a workspace whose
    data differs from the data the run was evaluated on (the gate scores on that test split).
    """
    if not model_file.is_file():
        raise RegistryError(f"{model_file}: not found; run the pipeline (`mlcycle run`) first")
    experiment_id = connect()
    model_md5 = file_md5(model_file)
    with tracking_errors("find the run to register"):
        run = (
            _client().get_run(run_id) if run_id else _newest_evaluated_run(experiment_id, model_md5)
        )
        if run is None:
            raise RegistryError(
                f"no finished, evaluated MLflow run has the model in {model_file} "
                f"(md5 {model_md5}); run `mlcycle run` or `dvc repro` with tracking first"
            )
        tags = run.data.tags
        if run.info.status != "FINISHED" or tags.get(TAG_EVALUATED) != "true":
            raise RegistryError(
                f"run {run.info.run_id} is {run.info.status}"
                f"{'' if tags.get(TAG_EVALUATED) == 'true' else ', not evaluated'}: only finished, "
                "evaluated runs are registered"
            )
        model_run_id = tags.get(TAG_MODEL_RUN) or run.info.run_id
        model_tags = (
            tags if model_run_id == run.info.run_id else _client().get_run(model_run_id).data.tags
        )
        if model_tags.get(TAG_MODEL_MD5) != model_md5:
            raise RegistryError(
                f"run {run.info.run_id} evaluated a model with md5 "
                f"{model_tags.get(TAG_MODEL_MD5)}, but {model_file} has md5 {model_md5}; "
                "`dvc checkout` the run's outputs first"
            )
        model_id = _logged_model_id(experiment_id, model_run_id)
    workspace = data_versions(lock_path)
    recorded = {
        k.removeprefix(TAG_DVC_PREFIX): v for k, v in tags.items() if k.startswith(TAG_DVC_PREFIX)
    }
    for path, md5 in recorded.items():
        # dvc.lock, then the files themselves: the gate scores the split on disk
        on_disk = workspace.get(path) == md5 and dvc_hash(lock_path.parent, path) == md5
        if not on_disk:
            raise RegistryError(
                f"{path} in this workspace is not the data run {run.info.run_id} was evaluated "
                f"on ({md5}); `dvc checkout` or re-run the pipeline"
            )
    _check_params(run, params_path or lock_path.parent / PARAMS_FILE.name)
    try:
        metrics = {name: float(run.data.metrics[f"test_{name}"]) for name in SCORES}
    except KeyError as missing:
        raise RegistryError(f"run {run.info.run_id} has no {missing.args[0]} metric") from None
    _, spec = _model_spec(model_file)
    version_tags = {
        **{k: v for k, v in tags.items() if k.startswith(TAG_DVC_PREFIX)},
        TAG_GIT_COMMIT: tags.get(TAG_GIT_COMMIT, "unknown"),
        TAG_GIT_DIRTY: tags.get(TAG_GIT_DIRTY, "unknown"),
        TAG_FLOW_RUN: tags.get(TAG_FLOW_RUN, "none"),
        TAG_RUN: run.info.run_id,
        TAG_MODEL_MD5: model_md5,
        TAG_PARAMS: json.dumps(dict(sorted(run.data.params.items()))),
        TAG_CLASS_NAMES: json.dumps(list(spec["class_names"])),
        TAG_INPUT_SHAPE: json.dumps(list(spec["input_shape"])),
        TAG_RAW_SHAPE: json.dumps(_raw_shape(raw_dir, spec)),
        **{f"{TAG_METRIC_PREFIX}{k}": repr(v) for k, v in metrics.items()},
    }
    return Candidate(run.info.run_id, model_run_id, model_id, model_md5, metrics, version_tags)


def _check_params(run: Any, params_path: Path) -> None:
    """params.yaml must hold the params the run trained with: restore writes it back. The
    registry and serve sections may differ (they steer later steps, not the model)."""
    if not params_path.is_file():
        return
    from tasks.config import load_params

    logged = run.data.params
    current = {k: str(v) for k, v in load_params(params_path).flat().items()}
    differ = sorted(
        key
        for key, value in current.items()
        if key in logged and logged[key] != value and not key.startswith(("registry.", "serve."))
    )
    if differ:
        shown = ", ".join(f"{k} {logged[k]} -> {current[k]}" for k in differ[:3])
        raise RegistryError(
            f"{params_path} differs from the params run {run.info.run_id} trained with ({shown}"
            f"{' ...' if len(differ) > 3 else ''}); `git checkout {params_path}` or re-run"
        )


def _raw_shape(raw_dir: Path, spec: Mapping[str, Any]) -> list[int]:
    """One raw image's shape; without ``data/raw`` (a bare workspace), the model's input's."""
    meta = raw_dir / "meta.json"
    if meta.is_file():
        return list(read_json(meta)["image_shape"])
    return list(spec["input_shape"])


def _newest_evaluated_run(experiment_id: str, model_md5: str) -> Any:
    client = _client()
    finished = f"attributes.status = 'FINISHED' and tags.`{TAG_EVALUATED}` = 'true'"
    newest = ["attributes.start_time DESC"]
    own = client.search_runs(
        [experiment_id], f"{finished} and tags.`{TAG_MODEL_MD5}` = '{model_md5}'", order_by=newest
    )
    loggers = client.search_runs(
        [experiment_id], f"tags.`{TAG_MODEL_MD5}` = '{model_md5}'", order_by=newest
    )
    reusing = [
        run
        for logger in loggers
        for run in client.search_runs(
            [experiment_id],
            f"{finished} and tags.`{TAG_MODEL_RUN}` = '{logger.info.run_id}'",
            order_by=newest,
        )
    ]
    runs = sorted([*own, *reusing], key=lambda run: run.info.start_time, reverse=True)
    return runs[0] if runs else None


def _logged_model_id(experiment_id: str, model_run_id: str) -> str:
    models = _client().search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{model_run_id}'"
    )
    if not models:
        raise RegistryError(f"run {model_run_id} logged no model to MLflow")
    return max(models, key=lambda model: model.creation_timestamp).model_id


def _model_spec(model_file: Path) -> tuple[Any, dict[str, Any]]:
    from tasks.model_io import load_model

    return load_model(model_file)


# --- 2. the version ----------------------------------------------------------------------------


def create_version(candidate: Candidate, name: str) -> RegisteredVersion:
    """Register the candidate's model under ``name``, or find the version that already holds it.

    A retry of the same pipeline run, or a run that reused the same model file, gets the
    existing version back; its load check runs again.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    # Under the lock: two registrations of one model file at once must not both create.
    with tracking_errors(f"register a version of '{name}'"), registry_lock(name):
        record_lineage_files(candidate.run_id)
        existing = client.search_model_versions(
            f"name = '{name}' and tags.`{TAG_MODEL_MD5}` = '{candidate.model_md5}'"
        )
        if existing:
            version = str(max(existing, key=lambda v: int(v.version)).version)
            log.info(
                "register: this model is already version %s of '%s'; reusing it", version, name
            )
            return RegisteredVersion(name, version, created=False)
        try:
            client.create_registered_model(
                name,
                description="Trained by the mlcycle pipeline; its aliases decide what is served.",
            )
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        created = client.create_model_version(
            name,
            source=f"models:/{candidate.model_id}",
            run_id=candidate.model_run_id,
            tags={**candidate.tags, TAG_CHECK: CHECK_PENDING},
            description=f"Registered from MLflow run {candidate.run_id}; load-back check pending.",
            model_id=candidate.model_id,
        )
    log.info("register: created version %s of '%s'", created.version, name)
    return RegisteredVersion(name, str(created.version), created=True)


def retire_version(name: str, version: str, reason: str) -> None:
    """Undo a registration that did not complete: no alias may point at this version.

    ``champion``, if it got that far, goes back to the version it replaced."""
    client = _client()
    with tracking_errors(f"retire version {version} of '{name}'"), registry_lock(name):
        previous = client.get_model_version(name, version).tags.get(TAG_PREVIOUS_CHAMPION)
        for alias, holder in alias_map(name).items():
            if holder != version:
                continue  # moved on by someone else meanwhile: theirs, not ours to undo
            if alias == CHAMPION and previous:
                client.set_registered_model_alias(name, CHAMPION, previous)
            else:
                client.delete_registered_model_alias(name, alias)
        client.set_model_version_tag(name, version, TAG_CHECK, CHECK_FAILED)
        client.update_model_version(name, version, description=f"Not served: {reason}")
    log.warning("register: version %s of '%s' retired: %s", version, name, reason)


# --- 3. the load-back check --------------------------------------------------------------------


@contextmanager
def load_registered(name: str, version: str) -> Iterator[Any]:
    """``models:/<name>/<version>`` as MLflow serves it (pyfunc), downloaded into a folder
    that is removed afterwards (MLflow's own default download folder is never cleaned)."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="mlcycle-registry-") as scratch:
        yield mlflow.pyfunc.load_model(f"models:/{name}/{version}", dst_path=scratch)


def check_version(
    name: str, version: str, samples: np.ndarray, expected: np.ndarray | None = None
) -> None:
    """Load the version back and score ``samples``: finite scores of the right shape, equal to
    ``expected`` (the local model's) when given. Marks the version passed or failed."""
    client = _client()
    try:
        with load_registered(name, version) as loaded:
            scores = np.asarray(loaded.predict(samples.astype(np.float32)))
        problem = _score_problem(scores, len(samples), expected)
    except Exception as error:  # MLflow and torch raise anything when an artifact is broken
        problem = f"cannot load or run it ({type(error).__name__}: {str(error)[:300]})"
    with tracking_errors(f"record the load check of version {version}"):
        client.set_model_version_tag(
            name, version, TAG_CHECK, CHECK_FAILED if problem else CHECK_PASSED
        )
    if problem:
        raise LoadCheckFailed(
            f"version {version} of '{name}' failed the load-back check: {problem}"
        )
    log.info(
        "register: version %s loads back from the registry and scores %d test images as "
        "the local model does",
        version,
        len(samples),
    )


def check_registered(
    registered: RegisteredVersion,
    policy: RegistryParams,
    model_file: Path = MODEL_FILE,
    processed_dir: Path = PROCESSED_DIR,
) -> None:
    """The registration's load-back check: the registered copy must score the first
    ``check_samples`` test images exactly as the local model file does."""
    samples = test_samples(processed_dir, policy.check_samples).images
    expected = local_scores(model_file, samples)
    check_version(registered.name, registered.version, samples, expected)


def _score_problem(scores: np.ndarray, count: int, expected: np.ndarray | None) -> str | None:
    if scores.ndim != 2 or len(scores) != count:
        return f"expected scores of shape ({count}, classes), got {scores.shape}"
    if not np.isfinite(scores).all():
        return "its scores hold NaN or infinity"
    if expected is not None:
        if scores.shape != expected.shape:
            return f"scores of shape {scores.shape}, the local model's are {expected.shape}"
        if not np.allclose(scores, expected, rtol=1e-4, atol=1e-4):
            worst = float(np.abs(scores - expected).max())
            return f"scores differ from the local model's by up to {worst:.3g}"
    return None


def local_scores(model_file: Path, samples: np.ndarray) -> np.ndarray:
    import torch

    from tasks.model_io import predict_logits

    model, _ = _model_spec(model_file)
    return predict_logits(model, torch.from_numpy(samples.astype(np.float32))).numpy()


def test_samples(processed_dir: Path, count: int) -> ImageDataset:
    test, _ = read_split(processed_dir, "test")
    return ImageDataset(test.images[:count], test.labels[:count], test.class_names)


# --- 4. the promotion gate ---------------------------------------------------------------------


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: RegistryParams,
    champion_version: str | None = None,
) -> Decision:
    """Whether the candidate should become champion, and why, in one sentence."""
    metric = policy.metric
    value = candidate[metric]
    if value < policy.min_score - TOLERANCE:
        return Decision(
            False,
            f"{metric} {value:.4f} is below the floor registry.min_score {policy.min_score:.4f}",
        )
    if champion is None:
        return Decision(
            True,
            f"first champion: {metric} {value:.4f} clears the floor registry.min_score "
            f"{policy.min_score:.4f}",
        )
    gain = value - champion[metric]
    versus = f"champion v{champion_version}" if champion_version else "the champion"
    if gain <= TOLERANCE or gain < policy.min_improvement - TOLERANCE:
        return Decision(
            False,
            f"{metric} {value:.4f} vs {versus} {champion[metric]:.4f} ({gain:+.4f}) does not "
            f"beat it by registry.min_improvement {policy.min_improvement:.4f}",
        )
    for guard in policy.guard_metrics:
        if candidate[guard] < champion[guard] - TOLERANCE:
            return Decision(
                False,
                f"{metric} improves by {gain:+.4f}, but guard metric {guard} drops from "
                f"{champion[guard]:.4f} ({versus}) to {candidate[guard]:.4f}",
            )
    return Decision(
        True,
        f"{metric} {value:.4f} beats {versus} {champion[metric]:.4f} by {gain:+.4f} "
        f"(margin {policy.min_improvement:.4f})"
        + (
            f"; no guard metric ({', '.join(policy.guard_metrics)}) got worse"
            if policy.guard_metrics
            else ""
        ),
    )


def score_version(name: str, version: str, test: ImageDataset) -> dict[str, float]:
    """Accuracy and macro-F1 of a registered version on a test split, as evaluate scores them."""
    with load_registered(name, version) as loaded:
        return score_loaded(loaded, test)


def score_loaded(loaded: Any, test: ImageDataset) -> dict[str, float]:
    from tasks.evaluate import classification_scores

    scores = np.asarray(loaded.predict(test.images.astype(np.float32)))
    result = classification_scores(test.labels, scores.argmax(axis=1), test.class_names)
    return {"accuracy": result.accuracy, "macro_f1": result.macro_f1}


def score_champion(name: str, champion: str, test: ImageDataset) -> dict[str, float] | str:
    """The champion's scores, or why it cannot be loaded. Only a failed *load* counts as a
    broken champion; the tracking server failing, or scoring failing (memory), raises."""
    from mlflow.exceptions import MlflowException

    with ExitStack() as stack:
        try:
            loaded = stack.enter_context(load_registered(name, champion))
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # artifacts gone: broken
                raise
            return f"champion v{champion} cannot be loaded (its artifacts are missing)"
        except Exception as error:  # torch or MLflow reading a damaged artifact
            return f"champion v{champion} cannot be loaded ({type(error).__name__})"
        return score_loaded(loaded, test)


def comparable(candidate_tags: Mapping[str, str], champion_tags: Mapping[str, str]) -> str | None:
    """Why the champion cannot be scored on the candidate's test split, or None if it can."""
    for tag, what in ((TAG_INPUT_SHAPE, "input shape"), (TAG_CLASS_NAMES, "classes")):
        if candidate_tags.get(tag) != champion_tags.get(tag):
            return (
                f"its {what} {champion_tags.get(tag)} differ from this model's "
                f"{candidate_tags.get(tag)}"
            )
    return None


def promote_if_better(
    candidate: Candidate,
    registered: RegisteredVersion,
    policy: RegistryParams,
    processed_dir: Path = PROCESSED_DIR,
) -> Registration:
    """Under the registry lock: ``challenger`` to the new version; ``champion`` too if it beats
    the champion on the same test split. The reason lands in the version's description."""
    name, version = registered.name, registered.version
    client = _client()
    test, _ = read_split(processed_dir, "test")
    with tracking_errors(f"move the aliases of '{name}'"), registry_lock(name):
        aliases = alias_map(name)
        champion = aliases.get(CHAMPION)
        if champion == version:
            return Registration(
                name,
                version,
                False,
                f"version {version} is already the champion",
                champion,
                candidate.metrics,
                None,
            )
        client.set_registered_model_alias(name, CHALLENGER, version)
        champion_metrics = None
        if champion is None:
            decision = decide(candidate.metrics, None, policy)
        else:
            champion_tags = client.get_model_version(name, champion).tags
            mismatch = comparable(candidate.tags, champion_tags)
            if mismatch:
                decision = Decision(
                    False,
                    f"champion v{champion} cannot be scored on this test "
                    f"split ({mismatch}); promote by hand with `mlcycle promote "
                    f"{version}` or use another registry.model_name",
                )
            else:
                scored = score_champion(name, champion, test)
                if isinstance(scored, str):  # it serves no one: judged against the floor
                    decision = decide(candidate.metrics, None, policy)
                    decision = Decision(decision.promote, f"{scored}; {decision.reason}")
                else:
                    champion_metrics = scored
                    decision = decide(candidate.metrics, champion_metrics, policy, champion)
                    decision = Decision(
                        decision.promote, decision.reason + _data_note(candidate, champion_tags)
                    )
        outcome = "promoted to champion" if decision.promote else "kept as challenger"
        if decision.promote and champion is not None:
            client.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, champion)
        client.set_model_version_tag(name, version, TAG_DECISION, outcome)
        client.update_model_version(
            name,
            version,
            description=f"{outcome.capitalize()}: {decision.reason}. Registered from MLflow run "
            f"{candidate.run_id}.",
        )
        if decision.promote:  # last: a failure before this leaves the old champion in place
            client.set_registered_model_alias(name, CHAMPION, version)
    log.info("register: version %s %s: %s", version, outcome, decision.reason)
    return Registration(
        name,
        version,
        decision.promote,
        decision.reason,
        version if decision.promote else champion,
        candidate.metrics,
        champion_metrics,
    )


def _data_note(candidate: Candidate, champion_tags: Mapping[str, str]) -> str:
    key = f"{TAG_DVC_PREFIX}data/processed"
    theirs, ours = champion_tags.get(key), candidate.tags.get(key)
    if theirs and ours and theirs != ours:
        return (
            f" (both scored on test split {ours[:12]}; the champion was trained on data "
            f"{theirs[:12]}, which may overlap it)"
        )
    return ""


# --- the registry lock -------------------------------------------------------------------------


@contextmanager
def registry_lock(
    name: str, wait_s: float = LOCK_WAIT_S, stale_s: float = LOCK_STALE_S
) -> Iterator[None]:
    """One writer of ``name``'s aliases at a time, across processes and machines.

    The lock is a registered model ``<name>.registry-lock``: creating a registered model whose
    name exists fails atomically in every MLflow backend, so at most one creator wins. A lock
    older than ``stale_s`` (its holder died) is broken.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    lock = f"{name}{LOCK_SUFFIX}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"owner": owner},
                description=f"Held by {owner} while it moves the aliases of '{name}'.",
            )
            break
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # released in the meantime
        age = time.time() - held.creation_timestamp / 1000
        if age > stale_s:
            log.warning(
                "registry lock %s held by %s for %.0f s: breaking it",
                lock,
                held.tags.get("owner"),
                age,
            )
            _release(lock, held.tags.get("owner"))
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"registered model '{lock}' (the registry lock) has been held by "
                f"{held.tags.get('owner')} for {age:.0f} s; if that process died, delete it "
                "in the MLflow UI and retry"
            )
        time.sleep(0.5)
    try:
        yield
    finally:
        _release(lock, owner)


def _release(lock: str, owner: str | None) -> None:
    """Delete the lock if ``owner`` still holds it (never a lock taken over by another)."""
    from mlflow.exceptions import MlflowException

    with suppress(MlflowException):
        client = _client()
        if client.get_registered_model(lock).tags.get("owner") == owner:
            client.delete_registered_model(lock)


# --- by hand: list, promote, rollback ----------------------------------------------------------


def list_versions(name: str) -> list[VersionRow]:
    from mlflow.exceptions import MlflowException

    connect()
    client = _client()
    with tracking_errors(f"list the versions of '{name}'"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"no registered model '{name}' yet; run `mlcycle run`"
                ) from None
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(
            f"name = '{name}'", order_by=["version_number DESC"]
        )
    rows = []
    for v in versions:
        tags = v.tags
        metrics = {
            key: float(tags[f"{TAG_METRIC_PREFIX}{key}"])
            for key in SCORES
            if f"{TAG_METRIC_PREFIX}{key}" in tags
        }
        dirty = "+dirty" if tags.get(TAG_GIT_DIRTY) == "true" else ""
        rows.append(
            VersionRow(
                version=str(v.version),
                aliases=tuple(sorted(by_version.get(str(v.version), []))),
                created=time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)
                ),
                accuracy=metrics.get("accuracy"),
                macro_f1=metrics.get("macro_f1"),
                check=tags.get(TAG_CHECK, "unknown"),
                data=tags.get(f"{TAG_DVC_PREFIX}data/processed", "unknown"),
                commit=tags.get(TAG_GIT_COMMIT, "unknown") + dirty,
                decision=tags.get(TAG_DECISION, ""),
            )
        )
    return rows


def check_samples_for(
    name: str, version: str, tags: Mapping[str, str], processed_dir: Path, count: int
) -> np.ndarray:
    """Test images the version can take: the workspace test split when its shape fits, else the
    input example logged with the model."""
    if (processed_dir / "test.npz").is_file():
        test = test_samples(processed_dir, count)
        if json.dumps(list(test.images.shape[1:])) == tags.get(TAG_INPUT_SHAPE):
            return test.images
    with load_registered(name, version) as loaded:
        example = loaded.input_example
    if example is None:
        raise LoadCheckFailed(f"version {version} of '{name}' has no input example to check with")
    return np.asarray(example)


def move_champion(
    name: str,
    version: str,
    note: str,
    processed_dir: Path = PROCESSED_DIR,
    samples: int = 64,
    remember_previous: bool = True,
) -> str | None:
    """Point ``champion`` at ``version`` after it passes the load-back check; returns the
    version that held it before. ``remember_previous``: record that version on the new
    champion, so that ``rollback`` undoes this move (a rollback itself keeps the old record,
    so a second rollback goes further back)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    with tracking_errors(f"move the champion of '{name}'"), registry_lock(name):
        try:
            tags = client.get_model_version(name, version).tags
        except MlflowException:
            raise RegistryError(
                f"'{name}' has no version {version}; see `mlcycle models`"
            ) from None
        previous = alias_map(name).get(CHAMPION)
        if previous == version:
            raise RegistryError(f"version {version} of '{name}' is already the champion")
        check_version(name, version, check_samples_for(name, version, tags, processed_dir, samples))
        if previous is not None and remember_previous:
            client.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, previous)
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, TAG_DECISION, note)
    log.info("champion of '%s': version %s -> %s (%s)", name, previous, version, note)
    return previous


def promote(name: str, version: str, processed_dir: Path = PROCESSED_DIR) -> str | None:
    connect()
    return move_champion(name, version, "promoted by hand", processed_dir)


def rollback(name: str, processed_dir: Path = PROCESSED_DIR) -> tuple[str, str]:
    """``champion`` back to the version it replaced; returns (from, to)."""
    connect()
    client = _client()
    with tracking_errors(f"read the champion of '{name}'"):
        current = alias_map(name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        previous = client.get_model_version(name, current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(
            f"champion v{current} of '{name}' replaced no earlier champion; nothing to roll back to"
        )
    move_champion(
        name,
        previous,
        f"champion again by rollback from v{current}",
        processed_dir,
        remember_previous=False,
    )
    return current, previous


# --- restore -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    version: str
    hashes: dict[str, str]  # path -> verified DVC hash
    commit: str
    commit_matches: bool


def restore(name: str, version: str, root: Path = Path()) -> Restored:
    """Bring back the data a version was trained on: the run's ``dvc.lock`` and ``params.yaml``,
    then ``dvc pull``; each data hash is recomputed and compared with the version's tags."""
    from mlflow.exceptions import MlflowException

    connect()
    client = _client()
    with tracking_errors(f"read version {version} of '{name}'"):
        try:
            tags = client.get_model_version(name, version).tags
        except MlflowException:
            raise RegistryError(
                f"'{name}' has no version {version}; see `mlcycle models`"
            ) from None
        run_id = tags.get(TAG_RUN)
        if not run_id:
            raise RegistryError(f"version {version} of '{name}' records no MLflow run")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files
        with tempfile.TemporaryDirectory() as scratch:
            try:
                folder = Path(client.download_artifacts(run_id, LINEAGE_DIR, scratch))
            except MlflowException as error:
                raise RegistryError(
                    f"run {run_id} has no {LINEAGE_DIR}/ files ({error.message})"
                ) from None
            lineage = {}
            for file in (DVC_LOCK, PARAMS_FILE):
                source = folder / file.name
                if not source.is_file():
                    raise RegistryError(f"run {run_id} has no {LINEAGE_DIR}/{file.name}")
                lineage[file] = source.read_bytes()
    expected = {
        k.removeprefix(TAG_DVC_PREFIX): v for k, v in tags.items() if k.startswith(TAG_DVC_PREFIX)
    }
    # The workspace's own dvc.lock and params.yaml come back if anything below fails (the data
    # they describe stays in the DVC cache).
    saved = {file: (root / file).read_bytes() for file in lineage if (root / file).is_file()}
    try:
        for file, content in lineage.items():
            with atomic_path(root / file) as tmp:
                tmp.write_bytes(content)
        pull_outputs(root)
        actual = {path: dvc_hash(root, path) for path in expected}
        wrong = {p: (expected[p], actual[p]) for p in expected if actual[p] != expected[p]}
        if wrong:
            raise RegistryError(
                f"restored data does not match version {version}: "
                + "; ".join(f"{p} is {a}, expected {e}" for p, (e, a) in wrong.items())
            )
    except BaseException:
        for file in lineage:
            if file in saved:
                with atomic_path(root / file) as tmp:
                    tmp.write_bytes(saved[file])
            else:
                (root / file).unlink(missing_ok=True)
        _checkout_quietly(root)  # the data back to what the restored dvc.lock says
        raise
    commit = tags.get(TAG_GIT_COMMIT, "unknown")
    head = git_state(root).get(TAG_GIT_COMMIT)
    return Restored(version, actual, commit, commit_matches=head == commit)


def _checkout_quietly(root: Path) -> None:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if (root / DVC_LOCK).is_file():
        with suppress(DvcException), Repo(str(root)) as repo:
            repo.checkout(force=True)


def pull_outputs(root: Path) -> None:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.pull(force=True)
    except DvcException as error:
        raise RegistryError(
            f"dvc pull failed: {error}; is the DVC remote the one the pipeline "
            "pushed to? (`dvc remote list`)"
        ) from None


def dvc_hash(root: Path, path: str) -> str:
    """DVC's content hash of a file or folder (``<md5>.dir`` for a folder), as dvc.lock has it."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    target = (root / path).resolve()
    if not target.exists():
        return "missing"
    with Repo(str(root)) as repo:
        _, _, obj = build(repo.cache.local, str(target), repo.fs, "md5", dry_run=True)
    return obj.hash_info.value


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


# --- Prefect tasks -----------------------------------------------------------------------------


_ROLLBACK_KEY = "registered_version"


@task(name="find-candidate")
def find_candidate_task(run_id: str | None = None) -> Candidate:
    candidate = find_candidate(run_id)
    run_logger(log.name).info(
        "register: run %s, test accuracy %.4f, macro-F1 %.4f",
        candidate.run_id,
        candidate.metrics["accuracy"],
        candidate.metrics["macro_f1"],
    )
    return candidate


@task(name="create-model-version")
def create_version_task(candidate: Candidate, name: str) -> RegisteredVersion:
    registered = create_version(candidate, name)
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
def check_version_task(registered: RegisteredVersion, policy: RegistryParams) -> None:
    check_registered(registered, policy)


@task(name="promote-if-better")
def promote_if_better_task(
    candidate: Candidate, registered: RegisteredVersion, policy: RegistryParams
) -> Registration:
    registration = promote_if_better(candidate, registered, policy)
    run_logger(log.name).info(
        "register: %s v%s %s: %s",
        registration.name,
        registration.version,
        "promoted to champion" if registration.promoted else "not promoted",
        registration.reason,
    )
    return registration


@task(name="publish-registration")
def publish_registration_task(registration: Registration, policy: RegistryParams) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="model-registration",
        markdown=registration_markdown(registration, policy),
        description=f"{registration.name} v{registration.version}",
    )

"""The load-back check: a registered version must be the model it was registered as, and load
and score test images as the local model file does, or it gets no alias.

Identity, not only health: the model file in the artifact store must have the md5 the version
recorded (``mlcycle.model_md5``), and the version must score its check record (test images and
the scores it gave them at registration, an .npz in its run whose md5 the version records) as it
did then. The proof lives in the registry's tags, so a file swapped in the artifact store
cannot vouch for itself.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import RegistryParams
from tasks.core.files import ImageDataset, file_md5, read_split
from tasks.core.lineage import TAG_CHECK, TAG_INPUT_SHAPE, TAG_MODEL_MD5
from tasks.core.model_file import load_model, model_file_problem, predict_logits
from tasks.core.paths import MODEL_FILE, PROCESSED_DIR
from tasks.core.redaction import redact
from tasks.core.tracking import get_model_version, tracking_errors
from tasks.registry.store import (
    CHECK_FAILED,
    CHECK_PASSED,
    TAG_CHECK_REASON,
    TAG_CHECK_RECORD,
    RegistryError,
    client,
    log,
)
from tasks.registry.versions import RegisteredVersion

CHECK_RECORD_DIR = "registry_check"  # run artifacts: one check record per registered version
MAX_REASON_CHARS = 4000  # MLflow keeps tag values up to 5000 characters
MAX_ERROR_CHARS = 300  # of a load error's text, in the reason
# Scores equal to these (relative and absolute) tolerances are the same model's: a reload
# may run other kernels than the process that scored first.
SCORE_RTOL = SCORE_ATOL = 1e-4


class LoadCheckFailed(RegistryError):
    """A registered version cannot be loaded back, is not the model it was registered as, or
    scores differently from the local model."""


class NotTheRegisteredModel(LoadCheckFailed):
    """The artifact store holds another model than the version was registered with."""

    def __init__(self, name: str, version: str, problem: str) -> None:
        super().__init__(
            f"version {version} of '{name}' is not the model it was registered as: {problem}"
        )
        self.problem = problem


@dataclass(frozen=True)
class CheckRecord:
    images: np.ndarray  # test images, as the version takes them
    scores: np.ndarray  # what the version scored them at registration


@contextmanager
def load_registered(name: str, version: str) -> Iterator[Any]:
    """``models:/<name>/<version>`` as MLflow serves it (pyfunc), downloaded into a folder
    that is removed afterwards (MLflow's own default download folder is never cleaned).
    NotTheRegisteredModel, before anything runs it, when its model file is not the one the
    version recorded.

    Without MLflow's warnings: the version was logged from this environment, and comparing
    its requirements with the installed packages takes 1.5 s per load."""
    import mlflow.artifacts
    import mlflow.pyfunc

    recorded_md5 = client().get_model_version(name, version).tags.get(TAG_MODEL_MD5)
    with tempfile.TemporaryDirectory(prefix="mlcycle-registry-") as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=scratch
            )
        )
        problem = model_file_problem(local, recorded_md5)
        if problem:
            raise NotTheRegisteredModel(name, version, problem)
        yield mlflow.pyfunc.load_model(str(local), suppress_warnings=True)


def predict_raw(loaded: Any, images: np.ndarray) -> np.ndarray:
    """Scores of raw images (uint8, as data/raw holds them and the version's signature
    declares) from a loaded registry version."""
    return np.asarray(loaded.predict(images))


def check_record_path(name: str, version: str) -> str:
    """Where a version's check record lives among its run's artifacts."""
    return f"{CHECK_RECORD_DIR}/{name}-v{version}.npz"


def write_check_record(
    name: str, version: str, run_id: str, images: np.ndarray, scores: np.ndarray
) -> None:
    """Keep the images a version was checked on and its scores (a small .npz in its run, its
    md5 on the version) for every later check to score against."""
    api = client()
    with tempfile.TemporaryDirectory(prefix="mlcycle-check-") as scratch:
        path = Path(scratch) / Path(check_record_path(name, version)).name
        np.savez_compressed(path, images=images, scores=scores)
        digest = file_md5(path)
        with tracking_errors(f"record the check images of version {version}"):
            api.log_artifact(run_id, str(path), CHECK_RECORD_DIR)
            api.set_model_version_tag(name, version, TAG_CHECK_RECORD, digest)


def read_check_record(name: str, version: str, run_id: str, recorded_md5: str) -> CheckRecord:
    """The version's check record, as long as it is the file it recorded; else
    NotTheRegisteredModel (a changed record proves nothing)."""
    relative = check_record_path(name, version)
    with tempfile.TemporaryDirectory(prefix="mlcycle-check-") as scratch:
        try:
            local = Path(client().download_artifacts(run_id, relative, scratch))
        except Exception as error:  # MLflow raises by artifact store; any of them means gone
            problem = (
                f"its check record {relative} in run {run_id} cannot be read "
                f"({type(error).__name__})"
            )
            raise NotTheRegisteredModel(name, version, problem) from None
        actual = file_md5(local)
        if actual != recorded_md5:
            problem = (
                f"its check record {relative} in run {run_id} has md5 {actual}, not the "
                f"{recorded_md5} it was registered with ({TAG_CHECK_RECORD})"
            )
            raise NotTheRegisteredModel(name, version, problem)
        with np.load(local, allow_pickle=False) as data:
            return CheckRecord(data["images"], data["scores"])


def check_version(
    name: str, version: str, samples: np.ndarray | None, expected: np.ndarray | None = None
) -> np.ndarray | None:
    """Load the version back, prove it is the model registered (its model file's md5, its
    check record's scores), and score ``samples`` (when given): finite scores of the right
    shape, equal to ``expected`` (the local model's) when given. Tags the version passed, or
    failed with the reason; raises LoadCheckFailed on failure. Returns its scores of
    ``samples``."""
    details = get_model_version(name, version)
    scores, problem = _check(name, details, samples, expected)
    _record_outcome(name, version, problem, details.tags)
    if problem:
        raise LoadCheckFailed(
            f"version {version} of '{name}' failed the load-back check: {problem}"
        )
    log.info(
        "register: version %s loads back from the registry, is the model registered%s%s",
        version,
        " (model file md5, its check record's scores)" if TAG_CHECK_RECORD in details.tags else "",
        f", and scores {len(scores)} test images as the local model does"
        if expected is not None and scores is not None
        else "",
    )
    return scores


def _check(
    name: str, details: Any, samples: np.ndarray | None, expected: np.ndarray | None
) -> tuple[np.ndarray | None, str | None]:
    """(scores of ``samples``, why the version fails; None when it passes)."""
    version = str(details.version)
    record_md5 = details.tags.get(TAG_CHECK_RECORD)
    try:
        record = (
            read_check_record(name, version, details.run_id, record_md5) if record_md5 else None
        )
        with load_registered(name, version) as loaded:
            if samples is None and record is None:  # nothing of its own: its input example
                samples = _input_example(loaded)
            scores = predict_raw(loaded, samples) if samples is not None else None
            rescored = predict_raw(loaded, record.images) if record is not None else None
    except NotTheRegisteredModel as mismatch:
        return None, mismatch.problem
    except Exception as error:  # MLflow and torch raise anything when an artifact is broken
        return (
            None,
            f"cannot load or run it ({type(error).__name__}: {str(error)[:MAX_ERROR_CHARS]})",
        )
    if scores is not None and samples is not None:
        problem = _score_problem(scores, len(samples), expected)
        if problem:
            return scores, problem
    if record is not None and rescored is not None:
        return scores, _recorded_problem(rescored, record.scores)
    return scores, None


def _record_outcome(name: str, version: str, problem: str | None, tags: Mapping[str, str]) -> None:
    api = client()
    with tracking_errors(f"record the load check of version {version}"):
        api.set_model_version_tag(
            name, version, TAG_CHECK, CHECK_FAILED if problem else CHECK_PASSED
        )
        if problem:
            api.set_model_version_tag(
                name, version, TAG_CHECK_REASON, redact(problem)[:MAX_REASON_CHARS]
            )
        elif TAG_CHECK_REASON in tags:
            api.delete_model_version_tag(name, version, TAG_CHECK_REASON)


def check_registered(
    registered: RegisteredVersion,
    policy: RegistryParams,
    model_file: Path = MODEL_FILE,
    processed_dir: Path = PROCESSED_DIR,
) -> None:
    """The registration's load-back check: the registered copy must be the model registered
    and score the first ``check_samples`` test images exactly as the local model file does.
    A version checked for the first time keeps those images and its scores as its check
    record."""
    name, version = registered.name, registered.version
    samples = first_test_images(processed_dir, policy.check_samples).images
    expected = local_scores(model_file, samples)
    scores = check_version(name, version, samples, expected)
    details = get_model_version(name, version)
    if scores is not None and TAG_CHECK_RECORD not in details.tags:
        write_check_record(name, version, details.run_id, samples, scores)


def _score_problem(scores: np.ndarray, count: int, expected: np.ndarray | None) -> str | None:
    if scores.ndim != 2 or len(scores) != count:
        return f"expected scores of shape ({count}, classes), got {scores.shape}"
    if not np.isfinite(scores).all():
        return "its scores hold NaN or infinity"
    if expected is not None:
        if scores.shape != expected.shape:
            return f"scores of shape {scores.shape}, the local model's are {expected.shape}"
        if not np.allclose(scores, expected, rtol=SCORE_RTOL, atol=SCORE_ATOL):
            worst = float(np.abs(scores - expected).max())
            return f"scores differ from the local model's by up to {worst:.3g}"
    return None


def _recorded_problem(scores: np.ndarray, recorded: np.ndarray) -> str | None:
    """Why the version's scores of its check images are not the ones it was registered with."""
    if scores.shape != recorded.shape:
        return (
            f"it scores its {len(recorded)} check images with shape {scores.shape}, but gave "
            f"{recorded.shape} at registration: it is not the model registered"
        )
    if not np.allclose(scores, recorded, rtol=SCORE_RTOL, atol=SCORE_ATOL):
        worst = float(np.abs(scores - recorded).max())
        return (
            f"it scores its {len(recorded)} check images differently from its registration "
            f"(by up to {worst:.3g}): it is not the model registered; restore the artifact "
            "store from a backup or promote another version"
        )
    return None


def local_scores(model_file: Path, samples: np.ndarray) -> np.ndarray:
    import torch

    model, _ = load_model(model_file)
    return predict_logits(model, torch.from_numpy(np.ascontiguousarray(samples))).numpy()


def first_test_images(processed_dir: Path, count: int) -> ImageDataset:
    """The first ``count`` images of the test split (the gate and checks score these)."""
    test, _ = read_split(processed_dir, "test")
    return ImageDataset(test.images[:count], test.labels[:count], test.class_names)


def check_samples_for(
    tags: Mapping[str, str], processed_dir: Path, count: int
) -> np.ndarray | None:
    """Test images to check a version with by hand: the workspace test split when its shape
    fits; None when it does not, or when the version has a check record (its own images):
    the check then scores those, or else the input example logged with the model."""
    if TAG_CHECK_RECORD in tags or not (processed_dir / "test.npz").is_file():
        return None
    test = first_test_images(processed_dir, count)
    if json.dumps(list(test.images.shape[1:])) == tags.get(TAG_INPUT_SHAPE):
        return test.images
    return None


def _input_example(loaded: Any) -> np.ndarray:
    example = loaded.input_example
    if example is None:
        raise LoadCheckFailed("it has no check record and no input example to check with")
    return np.asarray(example)

"""The load-back check: a registered version must load through MLflow and score test images
as the local model file does, or it gets no alias.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import RegistryParams
from tasks.core.files import ImageDataset, read_split
from tasks.core.lineage import TAG_CHECK, TAG_INPUT_SHAPE
from tasks.core.model_file import load_model, predict_logits
from tasks.core.paths import MODEL_FILE, PROCESSED_DIR
from tasks.core.tracking import tracking_errors
from tasks.registry.store import CHECK_FAILED, CHECK_PASSED, RegistryError, client, log
from tasks.registry.versions import RegisteredVersion


class LoadCheckFailed(RegistryError):
    """A registered version cannot be loaded back, or scores differently from the local model."""


@contextmanager
def load_registered(name: str, version: str) -> Iterator[Any]:
    """``models:/<name>/<version>`` as MLflow serves it (pyfunc), downloaded into a folder
    that is removed afterwards (MLflow's own default download folder is never cleaned).

    Without MLflow's warnings: the version was logged from this environment, and comparing
    its requirements with the installed packages takes 1.5 s per load."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="mlcycle-registry-") as scratch:
        uri = f"models:/{name}/{version}"
        yield mlflow.pyfunc.load_model(uri, dst_path=scratch, suppress_warnings=True)


def predict_raw(loaded: Any, images: np.ndarray) -> np.ndarray:
    """Scores of raw images (uint8, as data/raw holds them) from a loaded registry version.
    Versions logged before mlcycle's pyfunc model declare a float32 input, which MLflow
    enforces: the images are cast to what a version declares."""
    schema = loaded.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        images = images.astype(schema.numpy_types()[0], copy=False)
    return np.asarray(loaded.predict(images))


def check_version(
    name: str, version: str, samples: np.ndarray, expected: np.ndarray | None = None
) -> None:
    """Load the version back and score ``samples``: finite scores of the right shape, equal to
    ``expected`` (the local model's) when given. Marks the version passed or failed."""
    api = client()
    try:
        with load_registered(name, version) as loaded:
            scores = predict_raw(loaded, samples)
        problem = _score_problem(scores, len(samples), expected)
    except Exception as error:  # MLflow and torch raise anything when an artifact is broken
        problem = f"cannot load or run it ({type(error).__name__}: {str(error)[:300]})"
    with tracking_errors(f"record the load check of version {version}"):
        api.set_model_version_tag(
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
    samples = first_test_images(processed_dir, policy.check_samples).images
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

    model, _ = load_model(model_file)
    return predict_logits(model, torch.from_numpy(np.ascontiguousarray(samples))).numpy()


def first_test_images(processed_dir: Path, count: int) -> ImageDataset:
    """The first ``count`` images of the test split (the gate and checks score these)."""
    test, _ = read_split(processed_dir, "test")
    return ImageDataset(test.images[:count], test.labels[:count], test.class_names)


def check_samples_for(
    name: str, version: str, tags: Mapping[str, str], processed_dir: Path, count: int
) -> np.ndarray:
    """Test images the version can take: the workspace test split when its shape fits, else the
    input example logged with the model."""
    if (processed_dir / "test.npz").is_file():
        test = first_test_images(processed_dir, count)
        if json.dumps(list(test.images.shape[1:])) == tags.get(TAG_INPUT_SHAPE):
            return test.images
    with load_registered(name, version) as loaded:
        example = loaded.input_example
    if example is None:
        raise LoadCheckFailed(f"version {version} of '{name}' has no input example to check with")
    return np.asarray(example)

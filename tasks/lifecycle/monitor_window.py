"""The rows the monitor compares: the prediction log's newest window of the served version, or
an ``.npz`` batch scored by it now; either way brought to the reference's size and channels,
as the model's preprocessing brings them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.config import Params
from tasks.core.image_npz import ImageNpzError, read_image_npz
from tasks.core.images import prepare_images
from tasks.core.prediction_log.readers import UNLABELLED, read_window
from tasks.lifecycle.monitor_served import MonitorError, Served
from tasks.monitoring.reference import Reference

SECONDS_PER_HOUR = 3600
SHOWN_LABELS = 10  # out-of-range label values named in a refusal; more are "..."


@dataclass(frozen=True)
class Window:
    """What is compared: images as the model's preprocessing made them, its softmax output, the
    feedback labels (-1 where none), and where they came from."""

    images: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    source: str
    logged: tuple[float, float] | None = None  # the oldest and newest row's time (the log's)


def checked_log_path(log_path: Path | None) -> None:
    """A log named on purpose must be there (the default may not be yet: nothing served)."""
    if log_path is not None and not log_path.is_file():
        raise MonitorError(
            f"{log_path}: no such prediction log; pass the file `mlcycle serve "
            "--prediction-log` writes to (default data/serving/predictions.sqlite)"
        )


def logged_window(
    params: Params, served: Served, reference: Reference, log_path: Path, window: int
) -> Window:
    """The newest ``window`` logged predictions of the served version within
    ``monitor.max_age_hours``: older rows are not read, however few the newer ones are."""
    since = time.time() - params.monitor.max_age_hours * SECONDS_PER_HOUR
    logged = read_window(log_path, served.name, served.version, window, since)
    images = fitted(logged.images, reference) if len(logged) else logged.images
    source = f"{log_path}: newest {len(logged)} predictions of version {served.version}"
    span = (float(logged.logged_at[0]), float(logged.logged_at[-1])) if len(logged) else None
    return Window(images, logged.probabilities, logged.labels, source, span)


def batch_window(served: Served, reference: Reference, path: Path) -> Window:
    """An ``.npz`` batch (``images``, optional ``labels``) scored by the served version now."""
    import mlflow.pyfunc
    from scipy.special import softmax

    images, labels = batch_arrays(path, served, reference)
    model = mlflow.pyfunc.load_model(f"models:/{served.name}/{served.version}")
    probabilities = softmax(np.asarray(model.predict(images)), axis=1)
    return Window(images, probabilities.astype(np.float32), labels, f"{path}: {len(images)} images")


def batch_arrays(path: Path, served: Served, reference: Reference) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images, fitted to the reference, and its labels (``UNLABELLED`` without any),
    read by core's one ``.npz`` reader; every refusal one line naming the file."""
    try:
        batch = read_image_npz(path)
    except ImageNpzError as error:
        raise MonitorError(str(error)) from None
    labels = (
        np.full(len(batch.images), UNLABELLED)
        if batch.labels is None
        else checked_batch_labels(path, batch.labels, len(batch.images), served, reference)
    )
    return fitted(batch.images, reference), labels


def checked_batch_labels(
    path: Path, labels: np.ndarray, count: int, served: Served, reference: Reference
) -> np.ndarray:
    """A batch's ``labels`` as class indices of the served version, one per image: a value
    outside its classes is refused by name, never read as "no label" (as -1 is in the log)."""
    classes = len(reference.class_names)
    expected = f"one class index 0-{classes - 1} of {served.name} v{served.version} per image"
    if labels.shape != (count,):
        raise MonitorError(f"{path}: 'labels' must hold {expected}; got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        shown = ", ".join(repr(value) for value in labels[:3].tolist())
        raise MonitorError(
            f"{path}: 'labels' must hold {expected}; got {labels.dtype} values ({shown})"
        )
    outside = np.unique(labels[(labels < 0) | (labels >= classes)])
    if len(outside):
        shown = ", ".join(str(value) for value in outside[:SHOWN_LABELS].tolist())
        more = " ..." if len(outside) > SHOWN_LABELS else ""
        raise MonitorError(
            f"{path}: 'labels' holds {shown}{more}, outside the classes; expected {expected}"
        )
    return labels.astype(np.int64)


def fitted(images: np.ndarray, reference: Reference) -> np.ndarray:
    """Images brought to the reference's size and channels, as the model's preprocessing does."""
    height, _, channels = reference.image_shape
    return prepare_images(images, height, channels)

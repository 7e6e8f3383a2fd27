"""Reading the prediction log: monitoring's window of one version, the labelled rows training
exports, the classes a version was logged with, and the whole log (tests and tools).

Readers open the file read-only in effect (they never write), while the serving process's
writer appends to it; a file that is not a readable prediction log is one error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.paths import PREDICTION_LOG
from tasks.core.prediction_log.schema import PredictionLogError, reading, table_columns


def read_prediction_log(path: Path = PREDICTION_LOG) -> list[dict[str, Any]]:
    """The logged rows, oldest first, inputs back as arrays (for monitoring and tests)."""
    with reading(path) as connection:
        cursor = connection.execute("SELECT * FROM predictions ORDER BY id")
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    for row in rows:
        shape = tuple(json.loads(row["input_shape"]))
        row["input"] = np.frombuffer(row["input"], dtype=np.uint8).reshape(shape)
        row["probabilities"] = json.loads(row["probabilities"])
    return rows


UNLABELLED = -1  # Window.labels where no /feedback label came


@dataclass(frozen=True)
class Window:
    """The newest logged predictions of one model version, oldest first, as arrays."""

    row_ids: np.ndarray  # int64 (N,): the log's ids, increasing
    logged_at: np.ndarray  # float64 (N,): seconds since the epoch
    images: np.ndarray  # uint8 (N, H, W, C): as served, in the raw data's shape
    probabilities: np.ndarray  # float32 (N, K): in the version's class order
    predicted: np.ndarray  # int64 (N,): the class index answered
    labels: np.ndarray  # int64 (N,): the true class index from /feedback, UNLABELLED where none

    def __len__(self) -> int:
        return len(self.row_ids)


def read_window(
    path: Path,
    model_name: str,
    version: str,
    limit: int,
    since: float | None = None,
) -> Window:
    """The newest ``limit`` rows of ``model_name`` version ``version`` logged at ``since``
    (seconds since the epoch) or later. An empty window (N = 0; images (0, 0, 0, 0),
    probabilities (0, 0)) when there is no log yet or no such row. Reads 100,000 rows of 8x8
    images in well under a second: one query, then whole-column conversions."""
    if not path.is_file():
        return _empty_window()
    with reading(path) as connection:
        if not table_columns(connection):  # the writer has not created its table yet
            return _empty_window()
        rows = connection.execute(
            "SELECT id, logged_at, input_shape, input, class_index, probabilities, "
            f"COALESCE(label_index, {UNLABELLED}) FROM predictions "
            "WHERE model_name = ? AND model_version = ? AND logged_at >= ? "
            "ORDER BY id DESC LIMIT ?",
            (model_name, str(version), float("-inf") if since is None else since, max(limit, 0)),
        ).fetchall()
    if not rows:
        return _empty_window()
    row_ids, logged_at, shapes, inputs, predicted, probabilities, labels = zip(
        *reversed(rows), strict=True
    )
    if len(set(shapes)) > 1:
        raise PredictionLogError(
            f"{path}: {model_name} v{version} logged images of shapes {', '.join(set(shapes))}; "
            "one version serves one shape, so this log was edited or mixed up"
        )
    try:
        shape = tuple(json.loads(shapes[0]))
        return Window(
            row_ids=np.asarray(row_ids, dtype=np.int64),
            logged_at=np.asarray(logged_at, dtype=np.float64),
            images=np.frombuffer(b"".join(inputs), dtype=np.uint8).reshape(len(rows), *shape),
            probabilities=np.asarray(json.loads(f"[{','.join(probabilities)}]"), dtype=np.float32),
            predicted=np.asarray(predicted, dtype=np.int64),
            labels=np.asarray(labels, dtype=np.int64),
        )
    except (TypeError, ValueError) as error:  # bytes that are not the rows this code writes
        raise PredictionLogError(
            f"{path}: rows of {model_name} v{version} do not decode ({error}); the log was "
            "edited or damaged: move it aside (serving starts a new one)"
        ) from None


def _empty_window() -> Window:
    nothing = np.zeros(0, dtype=np.int64)
    return Window(
        row_ids=nothing,
        logged_at=np.zeros(0, dtype=np.float64),
        images=np.zeros((0, 0, 0, 0), dtype=np.uint8),
        probabilities=np.zeros((0, 0), dtype=np.float32),
        predicted=nothing,
        labels=nothing,
    )


@dataclass(frozen=True)
class LabelledRow:
    """A labelled prediction, as the feedback export reads it."""

    row_id: int
    prediction_id: str
    image: np.ndarray  # uint8 (H, W, C)
    label_name: str
    model_name: str
    model_version: str


def read_labelled(path: Path) -> list[LabelledRow]:
    """The labelled rows of the log, oldest first ([] when there is no log)."""
    if not path.is_file():
        return []
    with reading(path) as connection:
        rows = connection.execute(
            "SELECT id, prediction_id, input_shape, input, label_name, model_name, "
            "model_version FROM predictions WHERE label_index IS NOT NULL ORDER BY id"
        ).fetchall()
    return [
        LabelledRow(
            row_id=row_id,
            prediction_id=prediction_id,
            image=np.frombuffer(data, dtype=np.uint8).reshape(json.loads(shape)),
            label_name=label_name,
            model_name=name,
            model_version=version,
        )
        for row_id, prediction_id, shape, data, label_name, name, version in rows
    ]


def read_class_names(path: Path, model_name: str, version: str) -> tuple[str, ...] | None:
    """The classes the log recorded for a version (None when it recorded none)."""
    with reading(path) as connection:
        row = connection.execute(
            "SELECT class_names FROM model_classes WHERE model_name = ? AND model_version = ?",
            (model_name, version),
        ).fetchone()
    return tuple(json.loads(row[0])) if row else None

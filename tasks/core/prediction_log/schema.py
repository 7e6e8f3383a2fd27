"""The prediction log's file: its tables and indexes, creating it, and opening it to read.

A file that is not a prediction log of this code (another program's SQLite file, a damaged
one, or one written before the label columns existed) is refused with one error naming it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import MlcycleError

log = logging.getLogger("mlcycle.serve")


class PredictionLogError(MlcycleError):
    """The log file cannot be used: not a prediction log of this code, or damaged."""


SCHEMA = """
    CREATE TABLE IF NOT EXISTS predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        logged_at REAL NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_shape TEXT NOT NULL,
        input BLOB NOT NULL,          -- the raw-shaped uint8 image, C order
        class_index INTEGER NOT NULL,
        class_name TEXT NOT NULL,
        probabilities TEXT NOT NULL,  -- JSON list, in class order
        prediction_id TEXT,           -- as /predict answered it
        label_index INTEGER,          -- the true class from /feedback, NULL until labelled
        label_name TEXT,
        labelled_at REAL
    )"""
COLUMNS = frozenset(
    {
        "id",
        "logged_at",
        "model_name",
        "model_version",
        "endpoint",
        "input_shape",
        "input",
        "class_index",
        "class_name",
        "probabilities",
        "prediction_id",
        "label_index",
        "label_name",
        "labelled_at",
    }
)
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS predictions_by_prediction_id ON predictions (prediction_id)",
    # monitoring's window: the newest rows of one version
    "CREATE INDEX IF NOT EXISTS predictions_by_version "
    "ON predictions (model_name, model_version, id)",
    # the export: labelled rows only, few among many
    "CREATE INDEX IF NOT EXISTS predictions_labelled ON predictions (id) "
    "WHERE label_index IS NOT NULL",
)
# The classes of each version that made a logged prediction: labels are checked against the
# version that predicted, even after the alias moved on.
MODEL_CLASSES = """
    CREATE TABLE IF NOT EXISTS model_classes (
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        class_names TEXT NOT NULL,    -- JSON list, in class order
        PRIMARY KEY (model_name, model_version)
    )"""
INSERT = (
    "INSERT INTO predictions (logged_at, model_name, model_version, endpoint, input_shape, "
    "input, class_index, class_name, probabilities, prediction_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_CLASSES = "INSERT OR IGNORE INTO model_classes VALUES (?, ?, ?)"


def prepare_log(path: Path) -> None:
    """Create the log at ``path``, or check that the file there is one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)
            columns = table_columns(connection)
            if not columns >= COLUMNS:
                missing = ", ".join(sorted(COLUMNS - columns))
                raise PredictionLogError(
                    f"{path}: its predictions table lacks {missing}: not a prediction log "
                    "this mlcycle writes; move it aside or log elsewhere "
                    "(mlcycle serve --prediction-log)"
                )
            for statement in (*INDEXES, MODEL_CLASSES):
                connection.execute(statement)
    except sqlite3.DatabaseError as error:
        raise PredictionLogError(
            f"{path}: not a usable prediction log ({error}); move it aside or log elsewhere "
            "(mlcycle serve --prediction-log)"
        ) from None


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that is closed at the end (sqlite3's own context manager only commits)."""
    connection = sqlite3.connect(path)
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to read the log at ``path``; a file SQLite cannot read (corrupt,
    truncated, not a database, not this schema) is one error naming the file."""
    try:
        with connect(path) as connection:
            yield connection
    except sqlite3.DatabaseError as error:
        raise PredictionLogError(
            f"{path}: not a readable prediction log ({error}); move it aside (serving starts "
            "a new one) or point at another (mlcycle monitor --prediction-log)"
        ) from None


def table_columns(connection: sqlite3.Connection) -> set[str]:
    """The predictions table's columns (empty when there is no such table yet)."""
    return {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}


def usable(connection: sqlite3.Connection | None, why: str | None) -> sqlite3.Connection:
    """``connection``, or the sqlite3.Error a write meets while there is no log file (the
    writer could not start one: ``why``)."""
    if connection is None:
        raise sqlite3.OperationalError(f"no log file: {why}")
    return connection

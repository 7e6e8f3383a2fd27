"""The prediction log: inputs and outputs of served requests, appended to SQLite off the
request path (what monitoring reads), and the true labels people send back (``/feedback``).

One writer thread owns every write: predictions and labels go through the same FIFO queue, so
a label sent right after its ``/predict`` finds the prediction written, and SQLite never sees
two writers of ours at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import MlcycleError
from tasks.core.paths import PREDICTION_LOG
from tasks.serving.inputs import NOT_LOGGED, InputError, Label
from tasks.serving.model import ServedModel

log = logging.getLogger("mlcycle.serve")

# Labelled rows are training data (tasks.serving.feedback exports them): retention spares them
# until this many times serve.log_max_rows newer predictions came, so an export between two
# trainings still finds them, while a flood of labels cannot grow the file without bound.
LABELLED_RETENTION = 10
MAX_CLASSES_SHOWN = 20  # a refusal lists the valid classes, up to this many
# Ids handed out whose rows a failed write (a full disk) never stored, remembered so their
# feedback says so instead of "unknown"; past this many, the oldest are forgotten.
UNWRITTEN_REMEMBERED = 100_000


class PredictionLogError(MlcycleError):
    """The log file cannot be used: not a prediction log, or not one this code can upgrade."""


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
        prediction_id TEXT,           -- as /predict answered it; NULL in rows of older logs
        label_index INTEGER,          -- the true class from /feedback, NULL until labelled
        label_name TEXT,
        labelled_at REAL
    )"""
BASE_COLUMNS = frozenset(
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
    }
)
# Columns this schema added to the first one: a log written before them gains them in place.
ADDED_COLUMNS = (
    ("prediction_id", "TEXT"),
    ("label_index", "INTEGER"),
    ("label_name", "TEXT"),
    ("labelled_at", "REAL"),
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


def prepare_log(path: Path) -> None:
    """Create the log, or bring one written by an older version of this code up to date (the
    added columns are NULL in its old rows, which therefore cannot be labelled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)
            columns = _columns(connection)
            if not columns >= BASE_COLUMNS:
                missing = ", ".join(sorted(BASE_COLUMNS - columns))
                raise PredictionLogError(
                    f"{path}: its predictions table lacks {missing}: not a prediction log of "
                    "mlcycle; move it aside or log elsewhere (mlcycle serve --prediction-log)"
                )
            added = [(name, kind) for name, kind in ADDED_COLUMNS if name not in columns]
            for name, kind in added:
                connection.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
            for statement in (*INDEXES, MODEL_CLASSES):
                connection.execute(statement)
    except sqlite3.DatabaseError as error:
        raise PredictionLogError(
            f"{path}: not a usable prediction log ({error}); move it aside or log elsewhere "
            "(mlcycle serve --prediction-log)"
        ) from None
    if added:
        log.info("serve: %s upgraded (added %s)", path, ", ".join(name for name, _ in added))


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that is closed at the end (sqlite3's own context manager only commits)."""
    connection = sqlite3.connect(path)
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to read the log at ``path``; a file SQLite cannot read (corrupt,
    truncated, not a database) or rows that do not decode are one error naming the file."""
    try:
        with _connect(path) as connection:
            yield connection
    except sqlite3.DatabaseError as error:
        raise PredictionLogError(
            f"{path}: not a readable prediction log ({error}); move it aside (serving starts "
            "a new one) or point at another (mlcycle monitor --prediction-log)"
        ) from None


def _columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}


def new_ids(count: int, logged: bool = True) -> list[str]:
    """``count`` prediction ids (128 random bits each, as 32 hex digits) from one system call;
    ids of predictions that are not logged start with NOT_LOGGED."""
    digits = os.urandom(16 * count).hex()
    ids = [digits[start : start + 32] for start in range(0, 32 * count, 32)]
    return ids if logged else [NOT_LOGGED + one[1:] for one in ids]


@dataclass(frozen=True, slots=True)
class _Record:
    """One request's predictions, queued as they are (the writer encodes them)."""

    logged_at: float
    model_name: str
    model_version: str
    endpoint: str
    class_names: tuple[str, ...]
    images: np.ndarray
    probabilities: np.ndarray
    prediction_ids: list[str]


@dataclass(frozen=True, slots=True)
class _LabelJob:
    """One /feedback request waiting for the writer; ``done`` gets its StoredLabels or the
    InputError refusing it."""

    labels: tuple[Label, ...]
    done: Future


@dataclass(frozen=True)
class StoredLabel:
    prediction_id: str
    label_index: int
    label_name: str
    model_name: str
    model_version: str


@dataclass
class PredictionLog:
    """Inputs and outputs of served requests, appended to SQLite by a background thread.

    The request path only puts a record on the queue (never blocks: past ``max_queued``
    waiting requests, a record is dropped and counted). The writer commits in batches and keeps
    the newest ``max_rows`` (labelled rows longer: LABELLED_RETENTION).
    """

    path: Path
    max_rows: int
    sample_rate: float = 1.0
    batch_size: int = 64  # requests per write
    flush_s: float = 0.5
    max_queued: int = 2_000  # requests waiting for the writer
    # Unbounded, so a label is never dropped; record() bounds the predictions itself.
    queue: queue.Queue = field(default_factory=queue.Queue)
    dropped: int = 0
    written: int = 0
    labelled: int = 0
    # The file at ``path`` was removed or replaced under the writer this many times; each time
    # a new log was started there, and ``lost`` counts the rows the old file took with it.
    recreated: int = 0
    lost: int = 0
    recreated_at: float | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    # The writer's own state: rows up to these ids were pruned already (unlabelled, all).
    _pruned_to: tuple[int, int] = (0, 0)
    _classes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # (device, inode) of the file the writer's connection holds open
    _file: tuple[int, int] | None = None
    _last_seen: float = 0.0  # when the writer last found that file at ``path``
    _reopen_error: str | None = None  # why the last attempt to start a new file failed
    _unwritten: OrderedDict[str, str] = field(default_factory=OrderedDict)  # id -> why

    def start(self) -> PredictionLog:
        prepare_log(self.path)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def record(
        self, model: ServedModel, endpoint: str, images: np.ndarray, probabilities: np.ndarray
    ) -> list[str]:
        """Queue one request's images and outputs (no encoding here: the writer does it); the
        prediction ids to answer with, one per image."""
        if self.sample_rate < 1 and random.random() >= self.sample_rate:
            return new_ids(len(images), logged=False)
        if self.queue.qsize() >= self.max_queued:  # the writer is behind: drop, never wait
            self.dropped += len(images)
            return new_ids(len(images), logged=False)
        ids = new_ids(len(images))
        self.queue.put_nowait(
            _Record(
                time.time(),
                model.name,
                model.version,
                endpoint,
                model.class_names,
                images,
                probabilities,
                ids,
            )
        )
        return ids

    def submit_labels(self, labels: Sequence[Label]) -> Future:
        """Queue the true labels of logged predictions, all or none; the Future gets a
        StoredLabel per label, or an InputError naming the first one refused (404 unknown id,
        409 already labelled, 422 not a class of the version that predicted)."""
        for label in labels:
            if label.prediction_id.startswith(NOT_LOGGED):
                raise InputError(
                    f"{label.where}prediction_id",
                    f"{label.prediction_id} was not logged ({self._why_not_logged()}), "
                    "so it cannot be labelled",
                    404,
                )
        if self._stop.is_set() or self._thread is None or not self._thread.is_alive():
            raise InputError("feedback", "the prediction log is not running; try again", 503)
        job = _LabelJob(tuple(labels), Future())
        self.queue.put_nowait(job)
        return job.done

    def _why_not_logged(self) -> str:
        if self.sample_rate < 1:
            return f"serve.log_sample_rate is {self.sample_rate:g}: a share of requests is logged"
        return "the log was overloaded and dropped it"

    @staticmethod
    def _rows(record: _Record) -> list[tuple]:
        shape = json.dumps(list(record.images.shape[1:]))
        best = record.probabilities.argmax(axis=1).tolist()
        rounded = np.round(record.probabilities, 6).tolist()
        return [
            (
                record.logged_at,
                record.model_name,
                record.model_version,
                record.endpoint,
                shape,
                image.tobytes(),
                index,
                record.class_names[index],
                json.dumps(row),
                prediction_id,
            )
            for image, index, row, prediction_id in zip(
                record.images, best, rounded, record.prediction_ids, strict=True
            )
        ]

    def status(self) -> dict[str, Any]:
        """What /metadata shows of the log: where it is, what it wrote, dropped and lost."""
        return {
            "path": str(self.path),
            "written": self.written,
            "dropped": self.dropped,
            "labelled": self.labelled,
            "recreated": self.recreated,
            "lost": self.lost,
            "recreated_at": self.recreated_at,
        }

    def _open(self) -> sqlite3.Connection:
        """The writer's connection to the file at ``path``, whose identity it remembers."""
        connection = sqlite3.connect(self.path)
        # WAL with NORMAL: a commit is safe from a crash of this process, and waits for no
        # fsync (a label's answer took 5-500 ms on a busy disk with FULL); a power cut may lose
        # the last moments of log, which monitoring and training can spare.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file
        self._file = _identity(self.path)
        self._last_seen = time.time()
        return connection

    def _run(self) -> None:
        connection: sqlite3.Connection | None = self._open()
        try:
            while not (self._stop.is_set() and self.queue.empty()):
                records, jobs = self._take_batch()
                connection = self._same_file_or_new(connection)
                if records:  # first: a label may be for one of these
                    self._write(connection, records)
                if jobs:
                    self._label(connection, jobs)
        finally:
            if connection is not None:
                connection.close()

    def _same_file_or_new(self, connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """``connection`` while its file is still the one at ``path``; else a new log there
        (None while one cannot be made: the writes fail and are counted as dropped).

        An open SQLite file that is removed (``rm predictions.sqlite*``) or replaced (a backup
        moved over it) takes every later write with it, unseen by monitoring and training. One
        stat per batch (at most every ``flush_s`` when idle) notices, and the log starts anew.
        """
        try:
            current = _identity(self.path)
        except OSError:  # cannot tell (e.g. EACCES on a parent folder): keep the file we have
            current = self._file
        if connection is not None and current == self._file:
            self._last_seen = time.time()
            return connection
        if connection is not None:
            self._leave_old_file(connection)
        try:
            prepare_log(self.path)
            fresh = self._open()
        except (OSError, sqlite3.Error, PredictionLogError) as error:
            if str(error) != self._reopen_error:  # once per cause, not every half second
                log.warning(
                    "serve: prediction log %s cannot be started again (%s); predictions are "
                    "dropped until it can, retrying every %g s",
                    self.path,
                    error,
                    self.flush_s,
                )
            self._reopen_error = str(error)
            return None
        if self._reopen_error is not None:
            log.warning("serve: prediction log %s started again", self.path)
        self._reopen_error = None
        return fresh

    def _leave_old_file(self, connection: sqlite3.Connection) -> None:
        """Count what the removed or replaced file took with it, and close it first: its last
        close deletes ``-wal`` and ``-shm`` by name, which must not be the new file's."""
        lost = _row_count(connection)
        with contextlib.suppress(sqlite3.Error):
            connection.close()
        self.recreated += 1
        self.lost += lost or 0
        self.recreated_at = time.time()
        self._classes.clear()  # the new file holds no model_classes rows yet
        self._pruned_to = (0, 0)
        log.warning(
            "serve: prediction log %s was removed or replaced while serving (last seen %s): "
            "starting a new one there; the %s rows the old file held are not in it (gap %d; "
            "GET /metadata shows prediction_log)",
            self.path,
            _clock(self._last_seen),
            "?" if lost is None else lost,
            self.recreated,
        )

    def _take_batch(self) -> tuple[list[_Record], list[_LabelJob]]:
        """Up to ``batch_size`` requests, waiting at most ``flush_s`` for them; a label job
        ends the wait (someone is waiting for its answer), and so does close()."""
        records: list[_Record] = []
        jobs: list[_LabelJob] = []
        deadline = time.monotonic() + self.flush_s
        while len(records) < self.batch_size and len(jobs) < self.batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # close(): stop waiting
                break
            if isinstance(item, _LabelJob):
                jobs.append(item)
                deadline = 0.0  # take what is queued already, wait no more
            else:
                records.append(item)
        return records, jobs

    def _write(self, connection: sqlite3.Connection | None, records: list[_Record]) -> None:
        rows = [row for record in records for row in self._rows(record)]
        versions = {
            (record.model_name, record.model_version): record.class_names
            for record in records
            if (record.model_name, record.model_version) not in self._classes
        }
        try:
            connection = _usable(connection, self._reopen_error)
            with connection:
                connection.executemany(INSERT, rows)
                connection.executemany(
                    "INSERT OR IGNORE INTO model_classes VALUES (?, ?, ?)",
                    [
                        (name, version, json.dumps(list(c)))
                        for (name, version), c in versions.items()
                    ],
                )
                pruned_to = self._prune(connection)
        except sqlite3.Error as error:  # a full disk must not take serving down
            self.dropped += len(rows)
            log.warning("serve: prediction log write failed, %d rows dropped: %s", len(rows), error)
            why = f"writing it to {self.path} failed at {_clock(time.time())} ({error})"
            self._remember_unwritten([i for record in records for i in record.prediction_ids], why)
            return
        self._classes.update(versions)
        self._pruned_to = pruned_to
        self.written += len(rows)

    def _remember_unwritten(self, prediction_ids: list[str], why: str) -> None:
        for prediction_id in prediction_ids:
            self._unwritten[prediction_id] = why
        while len(self._unwritten) > UNWRITTEN_REMEMBERED:
            self._unwritten.popitem(last=False)

    def _prune(self, connection: sqlite3.Connection) -> tuple[int, int]:
        """Delete rows past retention; each pass walks only the ids it newly passed (the
        labelled rows it spares are not walked again)."""
        newest = connection.execute("SELECT MAX(id) FROM predictions").fetchone()[0] or 0
        unlabelled_from, labelled_from = self._pruned_to
        unlabelled_to = max(unlabelled_from, newest - self.max_rows)
        labelled_to = max(labelled_from, newest - self.max_rows * LABELLED_RETENTION)
        connection.execute(
            "DELETE FROM predictions WHERE id > ? AND id <= ? AND label_index IS NULL",
            (unlabelled_from, unlabelled_to),
        )
        connection.execute(
            "DELETE FROM predictions WHERE id > ? AND id <= ?", (labelled_from, labelled_to)
        )
        return unlabelled_to, labelled_to

    def _label(self, connection: sqlite3.Connection | None, jobs: list[_LabelJob]) -> None:
        """Store the jobs' labels in one transaction; each job whole or not at all."""
        # a caller that gave up waiting (its timeout) is not labelled behind its back
        live = [job for job in jobs if job.done.set_running_or_notify_cancel()]
        outcomes: list[tuple[_LabelJob, list[StoredLabel] | InputError]] = []
        try:
            connection = _usable(connection, self._reopen_error)
            with connection:
                for job in live:
                    try:
                        outcomes.append((job, self._store(connection, job.labels)))
                    except InputError as refusal:
                        outcomes.append((job, refusal))
        except sqlite3.Error as error:
            log.warning("serve: prediction log could not store labels: %s", error)
            failed = InputError("feedback", f"the prediction log could not store it ({error})", 503)
            outcomes = [(job, failed) for job in live]
        for job, outcome in outcomes:
            if isinstance(outcome, InputError):
                job.done.set_exception(outcome)
            else:
                self.labelled += len(outcome)
                job.done.set_result(outcome)

    def _store(
        self, connection: sqlite3.Connection, labels: tuple[Label, ...]
    ) -> list[StoredLabel]:
        """Check every label, then write them all (InputError before any write)."""
        updates, stored = [], []
        for label in labels:
            row = connection.execute(
                "SELECT id, model_name, model_version, label_name FROM predictions "
                "WHERE prediction_id = ?",
                (label.prediction_id,),
            ).fetchone()
            if row is None:
                raise self._not_found(label)
            row_id, name, version, labelled_as = row
            if labelled_as is not None:
                raise InputError(
                    f"{label.where}prediction_id",
                    f"{label.prediction_id} is already labelled {labelled_as!r}",
                    409,
                )
            classes = self._class_names(connection, name, version, label)
            index = class_index(label, classes, f"{name} v{version}")
            updates.append((index, classes[index], time.time(), row_id))
            stored.append(StoredLabel(label.prediction_id, index, classes[index], name, version))
        connection.executemany(
            "UPDATE predictions SET label_index = ?, label_name = ?, labelled_at = ? WHERE id = ?",
            updates,
        )
        return stored

    def _not_found(self, label: Label) -> InputError:
        """Why a label's prediction is not in the log: never written (503, the server's
        fault), or unknown / past retention / in a file that was replaced (404)."""
        where = f"{label.where}prediction_id"
        if (why := self._unwritten.get(label.prediction_id)) is not None:
            return InputError(
                where,
                f"{label.prediction_id} was answered but never logged: {why}; it cannot be "
                "labelled (the server's fault: free disk space for the prediction log)",
                503,
            )
        replaced = (
            f"; the log file was removed or replaced at {_clock(self.recreated_at)} and a new "
            "one started, so predictions logged before that are gone"
            if self.recreated_at is not None
            else ""
        )
        return InputError(
            where,
            f"{label.prediction_id} is not in the prediction log: unknown, or older than the "
            f"newest {self.max_rows} predictions it keeps (serve.log_max_rows){replaced}",
            404,
        )

    def _class_names(
        self, connection: sqlite3.Connection, name: str, version: str, label: Label
    ) -> tuple[str, ...]:
        key = (name, version)
        if key not in self._classes:
            row = connection.execute(
                "SELECT class_names FROM model_classes WHERE model_name = ? AND model_version = ?",
                key,
            ).fetchone()
            if row is None:  # a log edited by hand: nothing to check the label against
                raise InputError(
                    f"{label.where}label",
                    f"the classes of {name} v{version} are not in the log; cannot check it",
                    409,
                )
            self._classes[key] = tuple(json.loads(row[0]))
        return self._classes[key]

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self.queue.put_nowait(None)  # wakes a writer waiting for a batch to fill
        if self._thread is not None:
            self._thread.join(timeout)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none (a file this process
    cannot stat for another reason, e.g. EACCES, is not taken for a removed one)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _usable(connection: sqlite3.Connection | None, why: str | None) -> sqlite3.Connection:
    """``connection``, or the sqlite3.Error a write meets while there is no log file."""
    if connection is None:
        raise sqlite3.OperationalError(f"no log file: {why}")
    return connection


def _row_count(connection: sqlite3.Connection) -> int | None:
    """Rows of the (maybe removed) file ``connection`` holds open; None if unreadable."""
    try:
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    except sqlite3.Error:
        return None


def _clock(seconds: float | None) -> str:
    """A time of this process's log as people read it (local time, to the second)."""
    if seconds is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def class_index(label: Label, classes: Sequence[str], model: str) -> int:
    """The index of ``label`` (a class name, or an index) among ``classes`` of ``model``, or
    a 422 listing the classes."""
    value = label.label
    if isinstance(value, int) and 0 <= value < len(classes):
        return value
    if isinstance(value, str) and value in classes:
        return list(classes).index(value)
    shown = ", ".join(repr(name) for name in classes[:MAX_CLASSES_SHOWN])
    if len(classes) > MAX_CLASSES_SHOWN:
        shown += f" ... ({len(classes)} classes)"
    raise InputError(
        f"{label.where}label",
        f"{value!r} is not a class of {model}, which made this prediction; expected one of "
        f"{shown} (or an index 0-{len(classes) - 1})",
    )


def read_prediction_log(path: Path = PREDICTION_LOG) -> list[dict[str, Any]]:
    """The logged rows, oldest first, inputs back as arrays (for monitoring and tests)."""
    with _reading(path) as connection:
        cursor = connection.execute("SELECT * FROM predictions ORDER BY id")
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    for row in rows:
        shape = tuple(json.loads(row["input_shape"]))
        row["input"] = np.frombuffer(row["input"], dtype=np.uint8).reshape(shape)
        row["probabilities"] = json.loads(row["probabilities"])
    return rows


@dataclass(frozen=True)
class Window:
    """The newest logged predictions of one model version, oldest first, as arrays."""

    row_ids: np.ndarray  # int64 (N,): the log's ids, increasing
    logged_at: np.ndarray  # float64 (N,): seconds since the epoch
    images: np.ndarray  # uint8 (N, H, W, C): as served, in the raw data's shape
    probabilities: np.ndarray  # float32 (N, K): in the version's class order
    predicted: np.ndarray  # int64 (N,): the class index answered
    labels: np.ndarray  # int64 (N,): the true class index from /feedback, -1 where none

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
    with _reading(path) as connection:
        columns = _columns(connection)
        if not columns:
            return _empty_window()
        label = "COALESCE(label_index, -1)" if "label_index" in columns else "-1"
        rows = connection.execute(
            f"SELECT id, logged_at, input_shape, input, class_index, probabilities, {label} "
            "FROM predictions WHERE model_name = ? AND model_version = ? AND logged_at >= ? "
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
    """The labelled rows of the log, oldest first ([] when there is no log, or it predates
    labels)."""
    if not path.is_file():
        return []
    with _reading(path) as connection:
        if "label_index" not in _columns(connection):
            return []
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
    with _reading(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        row = (
            connection.execute(
                "SELECT class_names FROM model_classes WHERE model_name = ? AND model_version = ?",
                (model_name, version),
            ).fetchone()
            if "model_classes" in tables
            else None
        )
    return tuple(json.loads(row[0])) if row else None

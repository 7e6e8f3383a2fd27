"""The prediction log's writer: the serving process appends predictions and stores labels off
the request path, on one thread.

One writer thread owns every write: predictions and labels go through the same FIFO queue, so
a label sent right after its ``/predict`` finds the prediction written, and SQLite never sees
two writers of ours at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.core.prediction_log.ids import NOT_LOGGED, new_ids, not_logged_ids
from tasks.core.prediction_log.labels import (
    Label,
    LabelJob,
    Labeller,
    clock,
)
from tasks.core.prediction_log.schema import (
    INSERT,
    INSERT_CLASSES,
    PredictionLogError,
    prepare_log,
    usable,
)
from tasks.core.refusals import InputError

log = logging.getLogger("mlcycle.serve")

# Labelled rows are training data (tasks.core.prediction_log.export exports them): retention
# spares them until this many times serve.log_max_rows newer predictions came, so an export
# between two trainings still finds them, while a flood of labels cannot grow the file without
# bound.
LABELLED_RETENTION = 10
PROBABILITY_DIGITS = 6  # as /predict answers them
ALWAYS = 1.0  # the sample rate that logs every request (and draws no random number)
CLOSE_TIMEOUT_S = 10.0  # close() waits this long for the writer to flush what is queued


class LoggedModel(Protocol):
    """What the log records of the model that predicted (serving's ServedModel is one)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def class_names(self) -> tuple[str, ...]: ...


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

    def rows(self) -> list[tuple]:
        """The record's rows, one per image, in INSERT's column order."""
        shape = json.dumps(list(self.images.shape[1:]))
        best = self.probabilities.argmax(axis=1).tolist()
        rounded = np.round(self.probabilities, PROBABILITY_DIGITS).tolist()
        return [
            (
                self.logged_at,
                self.model_name,
                self.model_version,
                self.endpoint,
                shape,
                image.tobytes(),
                index,
                self.class_names[index],
                json.dumps(row),
                prediction_id,
            )
            for image, index, row, prediction_id in zip(
                self.images, best, rounded, self.prediction_ids, strict=True
            )
        ]


@dataclass
class PredictionLog:
    """Inputs and outputs of served requests, appended to SQLite by a background thread.

    The request path only puts a record on the queue (never blocks: past ``max_queued``
    waiting requests, a record is dropped and counted). The writer commits in batches and keeps
    the newest ``max_rows`` (labelled rows longer: LABELLED_RETENTION). ``rng`` draws which
    requests a ``sample_rate`` under 1 logs.
    """

    path: Path
    max_rows: int
    sample_rate: float = ALWAYS
    batch_size: int = 64  # requests per write
    flush_s: float = 0.5
    max_queued: int = 2_000  # requests waiting for the writer
    rng: random.Random = field(default_factory=random.Random)
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
    _labeller: Labeller = field(init=False)
    # (device, inode) of the file the writer's connection holds open
    _file: tuple[int, int] | None = None
    _last_seen: float = 0.0  # when the writer last found that file at ``path``
    _reopen_error: str | None = None  # why the last attempt to start a new file failed

    def __post_init__(self) -> None:
        self._labeller = Labeller(self.max_rows)

    def start(self) -> PredictionLog:
        prepare_log(self.path)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def record(
        self, model: LoggedModel, endpoint: str, images: np.ndarray, probabilities: np.ndarray
    ) -> list[str]:
        """Queue one request's images and outputs (no encoding here: the writer does it); the
        prediction ids to answer with, one per image."""
        if self.sample_rate < ALWAYS and self.rng.random() >= self.sample_rate:
            return not_logged_ids(len(images))
        if self.queue.qsize() >= self.max_queued:  # the writer is behind: drop, never wait
            self.dropped += len(images)
            return not_logged_ids(len(images))
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
                    HTTPStatus.NOT_FOUND,
                )
        if self._stop.is_set() or self._thread is None or not self._thread.is_alive():
            raise InputError(
                "feedback",
                "the prediction log is not running; try again",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        job = LabelJob(tuple(labels), Future())
        self.queue.put_nowait(job)
        return job.done

    def _why_not_logged(self) -> str:
        if self.sample_rate < ALWAYS:
            return f"serve.log_sample_rate is {self.sample_rate:g}: a share of requests is logged"
        return "the log was overloaded and dropped it"

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

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self.queue.put_nowait(None)  # wakes a writer waiting for a batch to fill
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the writer thread ------------------------------------------------------------------

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
                    self.labelled += self._labeller.run_jobs(
                        connection, jobs, self.recreated_at, self._reopen_error
                    )
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
        self._labeller.classes.clear()  # the new file holds no model_classes rows yet
        self._pruned_to = (0, 0)
        log.warning(
            "serve: prediction log %s was removed or replaced while serving (last seen %s): "
            "starting a new one there; the %s rows the old file held are not in it (gap %d; "
            "GET /metadata shows prediction_log)",
            self.path,
            clock(self._last_seen),
            "?" if lost is None else lost,
            self.recreated,
        )

    def _take_batch(self) -> tuple[list[_Record], list[LabelJob]]:
        """Up to ``batch_size`` requests, waiting at most ``flush_s`` for them; a label job
        ends the wait (someone is waiting for its answer), and so does close()."""
        records: list[_Record] = []
        jobs: list[LabelJob] = []
        deadline = time.monotonic() + self.flush_s
        while len(records) < self.batch_size and len(jobs) < self.batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # close(): stop waiting
                break
            if isinstance(item, LabelJob):
                jobs.append(item)
                deadline = 0.0  # take what is queued already, wait no more
            else:
                records.append(item)
        return records, jobs

    def _write(self, connection: sqlite3.Connection | None, records: list[_Record]) -> None:
        rows = [row for record in records for row in record.rows()]
        known = self._labeller.classes
        versions = {
            (record.model_name, record.model_version): record.class_names
            for record in records
            if (record.model_name, record.model_version) not in known
        }
        try:
            connection = usable(connection, self._reopen_error)
            with connection:
                connection.executemany(INSERT, rows)
                connection.executemany(
                    INSERT_CLASSES,
                    [
                        (name, version, json.dumps(list(classes)))
                        for (name, version), classes in versions.items()
                    ],
                )
                pruned_to = self._prune(connection)
        except sqlite3.Error as error:  # a full disk must not take serving down
            self.dropped += len(rows)
            log.warning("serve: prediction log write failed, %d rows dropped: %s", len(rows), error)
            why = f"writing it to {self.path} failed at {clock(time.time())} ({error})"
            self._labeller.remember_unwritten(
                [i for record in records for i in record.prediction_ids], why
            )
            return
        known.update(versions)
        self._pruned_to = pruned_to
        self.written += len(rows)

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


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none (a file this process
    cannot stat for another reason, e.g. EACCES, is not taken for a removed one)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _row_count(connection: sqlite3.Connection) -> int | None:
    """Rows of the (maybe removed) file ``connection`` holds open; None if unreadable."""
    try:
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    except sqlite3.Error:
        return None

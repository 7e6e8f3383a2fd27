"""The prediction log: inputs and outputs of served requests, appended to SQLite off the
request path (what monitoring reads).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.paths import PREDICTION_LOG
from tasks.serving.model import ServedModel

log = logging.getLogger("mlcycle.serve")


@dataclass
class PredictionLog:
    """Inputs and outputs of served requests, appended to SQLite by a background thread.

    The request path only puts a record on a bounded queue (never blocks: a full queue drops
    the record and counts it). The writer commits in batches and keeps the newest ``max_rows``.
    """

    path: Path
    max_rows: int
    sample_rate: float = 1.0
    batch_size: int = 64  # requests per write
    flush_s: float = 0.5
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2_000))  # requests
    dropped: int = 0
    written: int = 0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

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
            probabilities TEXT NOT NULL   -- JSON list, in class order
        )"""

    def start(self) -> PredictionLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(self.SCHEMA)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def record(
        self, model: ServedModel, endpoint: str, images: np.ndarray, probabilities: np.ndarray
    ) -> None:
        """Queue one request's images and outputs (no encoding here: the writer does it)."""
        if self.sample_rate < 1 and random.random() >= self.sample_rate:
            return
        try:
            self.queue.put_nowait(
                (
                    time.time(),
                    model.name,
                    model.version,
                    endpoint,
                    model.class_names,
                    images,
                    probabilities,
                )
            )
        except queue.Full:
            self.dropped += len(images)

    @staticmethod
    def _rows(request: tuple) -> list[tuple]:
        stamp, name, version, endpoint, class_names, images, probabilities = request
        shape = json.dumps(list(images.shape[1:]))
        rows = []
        for image, row in zip(images, probabilities, strict=True):
            index = int(row.argmax())
            rows.append(
                (
                    stamp,
                    name,
                    version,
                    endpoint,
                    shape,
                    image.tobytes(),
                    index,
                    class_names[index],
                    json.dumps(np.round(row, 6).tolist()),
                )
            )
        return rows

    def _run(self) -> None:
        connection = sqlite3.connect(self.path)
        try:
            while not (self._stop.is_set() and self.queue.empty()):
                batch = self._take_batch()
                if batch:
                    self._write(connection, batch)
        finally:
            connection.close()

    def _take_batch(self) -> list[tuple]:
        batch: list[tuple] = []
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=timeout))
            except queue.Empty:
                break
        return batch

    def _write(self, connection: sqlite3.Connection, requests: list[tuple]) -> None:
        batch = [row for request in requests for row in self._rows(request)]
        try:
            with connection:
                connection.executemany(
                    "INSERT INTO predictions (logged_at, model_name, model_version, endpoint, "
                    "input_shape, input, class_index, class_name, probabilities) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                connection.execute(
                    "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?",
                    (self.max_rows,),
                )
            self.written += len(batch)
        except sqlite3.Error as error:  # a full disk must not take serving down
            self.dropped += len(batch)
            log.warning(
                "serve: prediction log write failed, %d rows dropped: %s", len(batch), error
            )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def read_prediction_log(path: Path = PREDICTION_LOG) -> list[dict[str, Any]]:
    """The logged rows, oldest first, inputs back as arrays (for monitoring and tests)."""
    with sqlite3.connect(path) as connection:
        cursor = connection.execute("SELECT * FROM predictions ORDER BY id")
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    for row in rows:
        shape = tuple(json.loads(row["input_shape"]))
        row["input"] = np.frombuffer(row["input"], dtype=np.uint8).reshape(shape)
        row["probabilities"] = json.loads(row["probabilities"])
    return rows

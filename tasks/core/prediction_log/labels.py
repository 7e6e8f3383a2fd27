"""Labels for logged predictions: the checks a ``/feedback`` label must pass, and storing it.

A label names a prediction by its id and a class by name or index; it is refused with the
status ``/feedback`` answers: 404 an id not in the log, 409 one already labelled, 422 not a
class of the version that predicted, 503 a prediction answered but never written (the server's
fault). The writer thread runs these checks inside its own transactions.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus

from tasks.core.prediction_log.schema import usable
from tasks.core.refusals import InputError

log = logging.getLogger("mlcycle.serve")

MAX_CLASSES_SHOWN = 20  # a refusal lists the valid classes, up to this many
# Ids handed out whose rows a failed write (a full disk) never stored, remembered so their
# feedback says so instead of "unknown"; past this many, the oldest are forgotten.
UNWRITTEN_REMEMBERED = 100_000


@dataclass(frozen=True)
class Label:
    """One item of a /feedback body: the true class of a served prediction."""

    prediction_id: str
    label: str | int  # a class name, or an index into the model version's classes
    where: str = ""  # the item's place in the body ("items[3]."), to name fields in errors


@dataclass(frozen=True)
class StoredLabel:
    prediction_id: str
    label_index: int
    label_name: str
    model_name: str
    model_version: str


@dataclass(frozen=True, slots=True)
class LabelJob:
    """One /feedback request waiting for the writer; ``done`` gets its StoredLabels or the
    InputError refusing it."""

    labels: tuple[Label, ...]
    done: Future


@dataclass
class Labeller:
    """The writer's label checks, and what they remember of the log file it writes: the
    classes of each version recorded there, and the ids whose write failed."""

    max_rows: int  # serve.log_max_rows: named when an id is past retention
    classes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    unwritten: OrderedDict[str, str] = field(default_factory=OrderedDict)  # id -> why

    def remember_unwritten(self, prediction_ids: list[str], why: str) -> None:
        for prediction_id in prediction_ids:
            self.unwritten[prediction_id] = why
        while len(self.unwritten) > UNWRITTEN_REMEMBERED:
            self.unwritten.popitem(last=False)

    def run_jobs(
        self,
        connection: sqlite3.Connection | None,
        jobs: list[LabelJob],
        replaced_at: float | None,
        no_file: str | None = None,
    ) -> int:
        """Store the jobs' labels in one transaction, each job whole or not at all, and
        answer each job's Future; the number of labels stored. ``connection`` None: there is
        no log file (``no_file`` says why), every job gets a 503. ``replaced_at``: when the
        log file was last found removed or replaced (None: never), for the 404's reason."""
        # a caller that gave up waiting (its timeout) is not labelled behind its back
        live = [job for job in jobs if job.done.set_running_or_notify_cancel()]
        outcomes: list[tuple[LabelJob, list[StoredLabel] | InputError]] = []
        try:
            connection = usable(connection, no_file)
            with connection:
                for job in live:
                    try:
                        outcomes.append((job, self.store(connection, job.labels, replaced_at)))
                    except InputError as refusal:
                        outcomes.append((job, refusal))
        except sqlite3.Error as error:
            log.warning("serve: prediction log could not store labels: %s", error)
            failed = InputError(
                "feedback",
                f"the prediction log could not store it ({error})",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
            outcomes = [(job, failed) for job in live]
        stored = 0
        for job, outcome in outcomes:
            if isinstance(outcome, InputError):
                job.done.set_exception(outcome)
            else:
                stored += len(outcome)
                job.done.set_result(outcome)
        return stored

    def store(
        self,
        connection: sqlite3.Connection,
        labels: tuple[Label, ...],
        replaced_at: float | None,
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
                raise self.not_found(label, replaced_at)
            row_id, name, version, labelled_as = row
            if labelled_as is not None:
                raise InputError(
                    f"{label.where}prediction_id",
                    f"{label.prediction_id} is already labelled {labelled_as!r}",
                    HTTPStatus.CONFLICT,
                )
            classes = self.class_names(connection, name, version, label)
            index = class_index(label, classes, f"{name} v{version}")
            updates.append((index, classes[index], time.time(), row_id))
            stored.append(StoredLabel(label.prediction_id, index, classes[index], name, version))
        connection.executemany(
            "UPDATE predictions SET label_index = ?, label_name = ?, labelled_at = ? WHERE id = ?",
            updates,
        )
        return stored

    def not_found(self, label: Label, replaced_at: float | None) -> InputError:
        """Why a label's prediction is not in the log: never written (503, the server's
        fault), or unknown / past retention / in a file that was replaced (404)."""
        where = f"{label.where}prediction_id"
        if (why := self.unwritten.get(label.prediction_id)) is not None:
            return InputError(
                where,
                f"{label.prediction_id} was answered but never logged: {why}; it cannot be "
                "labelled (the server's fault: free disk space for the prediction log)",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        replaced = (
            f"; the log file was removed or replaced at {clock(replaced_at)} and a new "
            "one started, so predictions logged before that are gone"
            if replaced_at is not None
            else ""
        )
        return InputError(
            where,
            f"{label.prediction_id} is not in the prediction log: unknown, or older than the "
            f"newest {self.max_rows} predictions it keeps (serve.log_max_rows){replaced}",
            HTTPStatus.NOT_FOUND,
        )

    def class_names(
        self, connection: sqlite3.Connection, name: str, version: str, label: Label
    ) -> tuple[str, ...]:
        key = (name, version)
        if key not in self.classes:
            row = connection.execute(
                "SELECT class_names FROM model_classes WHERE model_name = ? AND model_version = ?",
                key,
            ).fetchone()
            if row is None:  # a log edited by hand: nothing to check the label against
                raise InputError(
                    f"{label.where}label",
                    f"the classes of {name} v{version} are not in the log; cannot check it",
                    HTTPStatus.CONFLICT,
                )
            self.classes[key] = tuple(json.loads(row[0]))
        return self.classes[key]


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


def clock(seconds: float | None) -> str:
    """A time of this process's log as people read it (local time, to the second)."""
    if seconds is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))

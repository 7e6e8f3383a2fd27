"""User errors: what a person can fix, reported in one line, never retried.

An ``MlcycleError`` is bad input, bad config or missing data. :func:`user_error` translates
the library failures a user meets (a full disk, a broken SQLite store, a damaged archive, a
server that does not answer) into one; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import sys
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any


class MlcycleError(Exception):
    """A problem the user can fix (bad input, bad config, missing data): reported in one line."""


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retrying cannot fix bad input or bad config."""
    return not isinstance(state.result(raise_on_failure=False), MlcycleError)


class _NoTracebackForUserErrors(logging.Filter):
    """A traceback explains a bug, not bad input: drop it for MlcycleError, keep the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MlcycleError):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_user_error_tracebacks(
    logger_names: Iterable[str] = ("prefect.flow_runs", "prefect.task_runs"),
) -> None:
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())


# --- The translation layer: what a user can fix, said in one line ------------------------------
#
# Libraries fail with their own exceptions (SQLAlchemy over a broken SQLite file, torch over a
# full disk, httpx over a dead server), often wrapped or masked by a later one. The command
# line's edge (``flows.cli.main``) asks :func:`user_error` once, instead of a try/except per
# call site, and prints the line it gets; anything it does not know keeps its traceback.

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def user_error(error: BaseException) -> MlcycleError | None:
    """The one-line error for ``error``, judged by it and the exceptions behind it (its cause
    and context: torch masks a full disk's OSError with a RuntimeError); None when nothing in
    the chain is a failure a user can fix (a bug, which keeps its traceback).

    A programming error on the outside is a bug whatever it was handling: a KeyError raised
    in an ``except PermissionError`` block must keep its traceback, not borrow the
    permission error's line."""
    if isinstance(error, BUG_TYPES):
        return None
    for link in exception_chain(error):
        if isinstance(link, MlcycleError):
            return link
        for translate in (_os_error, _sqlite_store, _damaged_archive, _unreachable_server):
            translated = translate(link)
            if translated is not None:
                return translated
    return None


# Raised by code, not by the world: never translated into a user's line.
BUG_TYPES = (
    AssertionError,
    AttributeError,
    IndexError,
    KeyError,
    NameError,
    NotImplementedError,
    TypeError,
    UnboundLocalError,
)


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it (or was being handled when it was raised), outward in."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as the user would type it: relative to the working folder when inside it."""
    resolved = Path(path).absolute()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_failure(path: str | os.PathLike[str], error: OSError) -> str:
    """``<path>: cannot be written (<why>); <what to do>``, by what the OS said."""
    folder = shown_path(Path(path).parent)
    reason = error.strerror or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = (
            f"{folder} must be on a disk with room left: free space (`df -h {folder}`), then "
            "run again"
        )
    elif error.errno == errno.EFBIG:
        advice = "the file is larger than this process may write (`ulimit -f`); raise the limit"
    elif error.errno == errno.EROFS:
        advice = f"{folder} is on a read-only file system; make it writable or work elsewhere"
    elif error.errno in ACCESS_ERRNOS:
        advice = f"give this user write access to {folder} (or run as its owner)"
    elif isinstance(error, FileExistsError | NotADirectoryError):
        reason = "a file stands where a folder of its path should be"
        advice = f"{folder} must be a folder this user can write to"
    else:
        advice = f"{folder} must be a folder this user can write to, with room left"
    return f"{shown_path(path)}: cannot be written ({reason}); {advice}"


def _os_error(error: BaseException) -> MlcycleError | None:
    if not isinstance(error, OSError):
        return None
    if error.errno in WRITE_ERRNOS:
        if error.filename:
            return MlcycleError(write_failure(error.filename, error))
        return MlcycleError(
            f"a write failed ({error.strerror}): free space on the disk (`df -h .`), then run again"
        )
    if error.errno in ACCESS_ERRNOS and error.filename:
        return MlcycleError(
            f"{shown_path(error.filename)}: permission denied ({error.strerror}); give this "
            "user access to it (or run as its owner)"
        )
    return None


# --- MLflow's SQLite store --------------------------------------------------------------------

SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_store(error: BaseException) -> MlcycleError | None:
    """A SQLite error is blamed on the MLflow store only when that file is indeed broken (the
    prediction log and Optuna's study are SQLite files too)."""
    if not isinstance(error, sqlite3.DatabaseError) or _busy(str(error)):
        return None  # a store busy with another writer is not a damaged one
    from tasks.core.tracking import tracking_uri

    path = sqlite_path(tracking_uri())
    if path is None:
        return None
    problem = sqlite_file_problem(path)
    if problem is None:
        return None
    return MlcycleError(
        f"{shown_path(path)}: not a usable MLflow database ({problem}); restore it or point "
        "MLFLOW_TRACKING_URI elsewhere"
    )


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///...`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def sqlite_file_problem(path: Path) -> str | None:
    """What is wrong with the SQLite file ``path``, in words; None if it reads as sound (or
    does not exist yet: SQLite creates it)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if size == 0:
        return None
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        return "not an SQLite file"
    expected = _sqlite_expected_size(header)
    if expected is not None and size < expected:
        return f"file is truncated: {size:,} of {expected:,} bytes"
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as failure:
        return None if _busy(str(failure)) else str(failure)
    return None if verdict == "ok" else str(verdict)


def _busy(message: str) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the file; try again later."""
    return "database is locked" in message or "database table is locked" in message


def _sqlite_expected_size(header: bytes) -> int | None:
    """Page size times page count, from the header (https://sqlite.org/fileformat.html: the
    count is valid only while its version number matches the change counter)."""
    if header[92:96] != header[24:28]:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    return page_size * pages if pages else None


# --- Damaged archives (.npz, .zip) ------------------------------------------------------------


def _damaged_archive(error: BaseException) -> MlcycleError | None:
    if not isinstance(error, zipfile.BadZipFile):
        return None
    name = archive_name(error.__traceback__)
    where = shown_path(name) if name else "a .npz or .zip file"
    return MlcycleError(
        f"{where}: damaged archive ({error}); restore it (a file DVC tracks: `dvc checkout "
        "--force` it, or remove its cache object and `dvc pull`)"
    )


def archive_name(trace: TracebackType | None) -> str | None:
    """The file of the zip archive being read where the traceback ends: zipfile's errors name
    only the member (``images.npy``), while the reading frame holds the archive itself."""
    found = None
    while trace is not None:
        reader = trace.tb_frame.f_locals.get("self")
        archive = reader if isinstance(reader, zipfile.ZipFile) else getattr(reader, "zip", None)
        if isinstance(archive, zipfile.ZipFile) and archive.filename:
            found = archive.filename
        trace = trace.tb_next
    return found


# --- Servers that do not answer ---------------------------------------------------------------


def _unreachable_server(error: BaseException) -> MlcycleError | None:
    """httpx's connect errors (the Prefect API, a serving app) name the URL asked."""
    httpx = sys.modules.get("httpx")  # never imported for this: without it, none was asked
    if httpx is None or not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return None
    try:
        url = str(error.request.url)
    except RuntimeError:  # raised without its request
        return None
    advice = "start it, or set the URL that answers"
    if "PREFECT_API_URL" in os.environ and url.startswith(os.environ["PREFECT_API_URL"]):
        advice = "start it (`prefect server start`), or unset PREFECT_API_URL for a temporary one"
    return MlcycleError(f"{url}: no answer ({str(error) or type(error).__name__}); {advice}")

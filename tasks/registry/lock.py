"""The registry lock: one writer of a registered model's aliases at a time.

The lock lives where the tracking store lives, so it holds for everyone who shares that store:

- a local store (``sqlite:///mlflow.db``, ``file:``, a folder): an OS file lock (``flock``) on
  a file beside the store; the kernel drops it when the holder dies;
- a PostgreSQL store (``postgresql://``): a session-level advisory lock in that database, across
  machines; PostgreSQL drops it when the holder's connection ends;
- any other store (an ``mlflow server`` over http(s), MySQL ...), which mlcycle cannot lock
  itself: a Prefect global concurrency limit of one slot on the Prefect server the flows use
  (``PREFECT_API_URL``), across machines, with a lease that expires if the holder dies. Without
  a Prefect server (the temporary one each process starts keeps leases in its own memory, so a
  killed holder would strand its slot) it is a file lock for this user on this machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from tasks.core.files import try_lock, unlock
from tasks.core.slots import SlotUnavailable, holding_slot
from tasks.core.tracking import tracking_uri
from tasks.registry.store import RegistryError, log

LOCK_WAIT_S = 660.0  # the held section takes seconds (minutes for a huge test split)
POLL_S = 0.2
MACHINE_LOCKS = Path("~/.cache/mlcycle/locks")  # for stores mlcycle cannot lock itself


@contextmanager
def registry_lock(name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the lock on ``name``'s aliases for the block; RegistryError after ``wait_s``."""
    uri = tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("", "sqlite", "file"):
        lock = _file_lock(lock_file(uri, name), wait_s)
    elif scheme.startswith("postgresql"):
        lock = _advisory_lock(uri, name, wait_s)
    elif os.environ.get("PREFECT_API_URL"):
        lock = _prefect_lock(name, wait_s)
    else:
        lock = _file_lock(machine_lock_file(uri, name), wait_s)
    with lock:
        yield


def lock_file(uri: str, name: str) -> Path:
    """The file locked for ``name`` beside a local store: ``.<name>.registry.lock``."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        folder = Path(unquote(uri.removeprefix("sqlite:///").split("?")[0])).parent
    elif parsed.scheme == "file":
        folder = Path(unquote(parsed.path))
    else:
        folder = Path(uri)
    return folder / f".{name}.registry.lock"


def machine_lock_file(uri: str, name: str) -> Path:
    """This user's lock file for ``name`` in a store that has no lock of its own."""
    store = re.sub(r"[^A-Za-z0-9.-]+", "_", uri)[:80]
    digest = hashlib.blake2b(uri.encode(), digest_size=4).hexdigest()
    return MACHINE_LOCKS.expanduser() / f"{store}-{digest}.{name}.registry.lock"


@contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as error:
        raise RegistryError(f"cannot open the registry lock {path}: {error}") from None
    with handle:
        _wait_for(
            lambda: try_lock(handle),
            wait_s,
            f"{path} (the registry lock) is held by another process",
        )
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")  # who holds it, for a person looking
            handle.flush()
            yield
        finally:
            unlock(handle)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, from the model name."""
    digest = hashlib.blake2b(f"mlcycle.registry:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def _advisory_lock(uri: str, name: str, wait_s: float) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    key = advisory_key(name)
    where = f"the registry lock of '{name}' (PostgreSQL advisory lock {key})"
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        try:
            # Autocommit: a session "idle in transaction" for the whole held section could be
            # ended by the server's idle_in_transaction_session_timeout, dropping the lock.
            connection = stack.enter_context(
                engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            )
            query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            _wait_for(
                lambda: bool(connection.execute(query, {"key": key}).scalar()),
                wait_s,
                f"{where} is held by another process",
            )
        except SQLAlchemyError as error:  # taking the lock failed; the block's errors are its own
            raise RegistryError(f"{where}: {str(error).splitlines()[0]}") from None
        release = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
        stack.callback(lambda: connection.execute(release, {"key": key}))
        yield


@contextmanager
def _prefect_lock(name: str, wait_s: float) -> Iterator[None]:
    limit = f"mlcycle-registry-{name}"
    where = f"the registry lock of '{name}' (Prefect global concurrency limit '{limit}')"
    with ExitStack() as stack:
        try:
            stack.enter_context(holding_slot(limit, where, wait_s))
        except SlotUnavailable as error:  # taking the lock failed; the block's errors are its own
            raise RegistryError(str(error)) from None
        yield


def _wait_for(take: Callable[[], bool], wait_s: float, held: str) -> None:
    deadline = time.monotonic() + wait_s
    waited = False
    while not take():
        if time.monotonic() > deadline:
            raise RegistryError(f"{held}; waited {wait_s:g} s")
        if not waited:
            log.info("registry: waiting: %s", held)
            waited = True
        time.sleep(POLL_S)

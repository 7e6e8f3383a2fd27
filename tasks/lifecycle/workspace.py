"""One mlcycle command at a time per workspace: ``mlcycle run``, ``register`` and ``restore``
each hold ``.mlcycle/workspace.lock`` while they work.

The lock is an OS file lock (``flock``): the kernel releases it when its holder dies, however it
dies, so a killed run never blocks the next one. The file also says who holds it (pid, host,
start time, command), so a second command can name the holder, and the next command after a
crash knows which process died (its MLflow run carries the same pid: see
``pipeline.close_orphaned_runs``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tasks.core.errors import MlcycleError
from tasks.core.files import try_lock, unlock

WORKSPACE_LOCK = Path(".mlcycle/workspace.lock")


class WorkspaceBusy(MlcycleError):
    """Another mlcycle command holds this workspace."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str  # local time, for people
    command: str

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, started {self.started})"


@dataclass(frozen=True)
class WorkspaceLock:
    """A held workspace: ``previous`` is the holder that died without releasing it, if any."""

    path: Path
    holder: Holder
    previous: Holder | None


@contextmanager
def workspace_lock(command: str, path: Path = WORKSPACE_LOCK) -> Iterator[WorkspaceLock]:
    """Hold the workspace for ``command``; WorkspaceBusy naming the holder if another has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        if not try_lock(handle):
            holder = _read(handle)
            who = holder.describe() if holder else "another mlcycle command"
            raise WorkspaceBusy(
                f"this workspace is busy: {who} holds {path}; wait for it to finish, or stop "
                f"it (Ctrl-C in its terminal{f', or kill -INT {holder.pid}' if holder else ''})"
            ) from None
        try:
            previous = _read(handle)  # left behind: its command died without releasing
            holder = Holder(
                pid=os.getpid(),
                host=socket.gethostname(),
                started=time.strftime("%Y-%m-%d %H:%M:%S"),
                command=command,
            )
            _write(handle, holder)
            yield WorkspaceLock(path, holder, previous)
        finally:
            handle.seek(0)
            handle.truncate()  # released cleanly: nothing left to report
            handle.flush()
            unlock(handle)


def _read(handle: IO[str]) -> Holder | None:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):  # written by another version, or half-written by a crash
        return Holder(pid=0, host="?", started="?", command=text[:80])


def _write(handle: IO[str], holder: Holder) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(asdict(holder)) + "\n")
    handle.flush()

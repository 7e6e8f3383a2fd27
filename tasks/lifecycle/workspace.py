"""One mlcycle command at a time per workspace, and one training run at a time per Prefect server.

``mlcycle run``, ``register``, ``restore`` and a training flow run that a Prefect worker started
each hold ``.mlcycle/workspace.lock`` while they work.

The lock is an OS file lock (``flock``): the kernel releases it when its holder dies, however it
dies, so a killed run never blocks the next one. The file also says who holds it (pid, host,
start time, command), so a second command can name the holder, and the next command after a
crash knows which process died (its MLflow run carries the same pid: see
``settle.close_orphaned_runs``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tasks.core.errors import MlcycleError
from tasks.core.files import try_lock, unlock
from tasks.core.slots import Takeover, holding_slot
from tasks.lifecycle.prefect_api import watching_api

WORKSPACE_LOCK = Path(".mlcycle/workspace.lock")

_held: WorkspaceLock | None = None  # what this process holds through `holding_workspace`


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


@contextmanager
def holding_workspace(command: str, say: Callable[[str], None]) -> Iterator[WorkspaceLock]:
    """This workspace to ``command`` alone; a pipeline run a dead command left open is closed
    (and ``say`` tells). Inside a block that already holds it (``mlcycle run`` around its
    flow), the flow's own call is that same hold."""
    global _held
    if _held is not None:
        yield _held
        return
    with workspace_lock(command) as lock:
        if lock.previous is not None:
            from tasks.lifecycle.settle import close_orphaned_runs

            say(f"the previous command here, {lock.previous.describe()}, died without finishing")
            for run_id in close_orphaned_runs(lock.previous.pid, lock.previous.host):
                say(f"its MLflow run {run_id} is now marked KILLED")
        _held = lock
        try:
            yield lock
        finally:
            _held = None


@contextmanager
def training_slot(name: str, wait_s: float, say: Callable[[str], None]) -> Iterator[None]:
    """One training run at a time across everyone who uses the Prefect server named by
    ``PREFECT_API_URL``: a global concurrency limit of one slot (``tasks.core.slots``). A
    second run waits, saying so, for up to ``wait_s``. Without a configured server (each
    ``mlcycle run`` starts its own) the workspace lock alone serialises runs, and this does
    nothing."""
    if not os.environ.get("PREFECT_API_URL"):
        yield
        return
    where = f"the training slot (Prefect global concurrency limit '{name}')"
    waiting = threading.Event()

    def say_waiting() -> None:
        waiting.set()
        say(f"waiting for {where}: another training run holds it (up to {wait_s:g} s)")

    def take_over(takeover: Takeover) -> None:
        from tasks.lifecycle.settle import settle_flow_run

        holder = takeover.holder
        why = f"{holder.describe()} died holding the training slot ({takeover.why})"
        settled = settle_flow_run(holder.flow_run_id, why) if holder.flow_run_id else None
        say(
            f"took over {where} from {holder.describe()}: {takeover.why}"
            + ("; its flow run is marked CRASHED" if takeover.crashed else "")
            + (f"; its {settled}" if settled else "")
        )

    hint = " (schedule.slot_wait_minutes); this run did nothing"
    with holding_slot(
        name, where, wait_s, on_wait=say_waiting, timeout_hint=hint, on_takeover=take_over
    ):
        if waiting.is_set():
            say(f"{where} is free: this run goes on")
        yield


@contextmanager
def watching_training(say: Callable[[str], None]) -> Iterator[None]:
    """A training run that a worker started (no ``mlcycle`` command around it to watch its
    API) ends within a minute when the Prefect server goes away, saying what was lost
    (``tasks.lifecycle.prefect_api.watching_api``); inside a command, the command's watch."""
    if not os.environ.get("PREFECT_API_URL"):
        yield
        return
    from tasks.lifecycle.settle import settle_runs_of_this_process

    since_ms = int(time.time() * 1000)

    def report(line: str) -> None:
        say(line)
        print(f"mlcycle: error: {line}", file=sys.stderr, flush=True)

    with watching_api(
        os.environ["PREFECT_API_URL"],
        lambda why: settle_runs_of_this_process(why, since_ms),
        report,
    ):
        yield


@contextmanager
def training_turn(
    command: str, slot: str, slot_wait_s: float, say: Callable[[str], None]
) -> Iterator[None]:
    """The training slot first, then the workspace: a second run triggered on this checkout
    waits for the slot instead of finding the workspace busy."""
    with (
        watching_training(say),
        training_slot(slot, slot_wait_s, say),
        holding_workspace(command, say),
    ):
        yield

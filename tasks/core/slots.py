"""Prefect global concurrency limits of one slot: a lock held across every process (and
machine) that reports to the Prefect server ``PREFECT_API_URL`` names.

The server leases the slot for ``SLOT_LEASE_S`` and the holder renews the lease in the
background, so a holder that dies frees the slot within minutes. A Prefect server keeps those
leases in memory by default (a restart forgets them while the slot still counts as taken) and
lists no lease's holder, so each holder also writes a record of itself into a Prefect variable
(``mlcycle-slot-<name>``: its lease, flow run, process and last renewal). A waiter that finds
the slot taken reads that record, and takes the slot over from a holder that is gone: its flow
run is not running as the server says, its process on this host is dead, or it has not renewed
for a whole lease. ``on_takeover`` tells; the dead holder's flow run is marked CRASHED.

The wait polls from the calling thread, so a Ctrl-C or SIGTERM ends it at once.

Used for the registry lock over a remote MLflow store and for one training run at a time.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tasks.core.errors import MlcycleError

SLOT_LEASE_S = 120.0  # a holder that dies frees its slot within this (Prefect's minimum: 60 s)
RENEW_EVERY_S = 20.0  # well inside the lease, so a few failed renewals lose nothing
SLOT_TAKEN_AFTER_S = 2.0  # a free slot is granted well within this
POLL_S = 1.0  # how often a waiter asks again
REQUEST_TIMEOUT_S = 10.0  # one call to the server: a hung server must not hang the holder
LOCKED = 423  # the server's answer while the slot is taken
TRANSIENT_S = 30.0  # a server failing this long while asked for the slot has failed


class SlotUnavailable(MlcycleError):
    """The slot stayed taken, or the Prefect server could not be asked for it."""


@dataclass(frozen=True)
class SlotHolder:
    """Who holds a slot, as its record on the server says."""

    lease_id: str
    flow_run_id: str | None
    pid: int
    host: str
    where: str
    since: float  # time.time()
    renewed: float

    def describe(self) -> str:
        process = f"pid {self.pid} on {self.host}"
        return f"flow run {self.flow_run_id} ({process})" if self.flow_run_id else process


@dataclass(frozen=True)
class Takeover:
    """A slot taken over from a holder that was gone, and how that was known."""

    holder: SlotHolder
    why: str
    crashed: bool = False  # its flow run read RUNNING on the server and is CRASHED now


def record_name(name: str) -> str:
    """The Prefect variable holding the record of ``name``'s holder."""
    return "mlcycle-slot-" + re.sub(r"[^a-z0-9_-]+", "-", name.lower())[:200]


def ensure_slot(name: str) -> None:
    """Create the limit ``name`` with one slot unless it exists."""
    from prefect.exceptions import ObjectAlreadyExists

    # ObjectAlreadyExists: another process created it first (the upsert is not atomic)
    with _client() as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)


@contextmanager
def holding_slot(
    name: str,
    where: str,
    wait_s: float,
    on_wait: Callable[[], None] | None = None,
    timeout_hint: str = "",
    on_takeover: Callable[[Takeover], None] | None = None,
) -> Iterator[None]:
    """Hold the slot of ``name`` (created when missing) for the block. ``on_wait`` runs once if
    the slot is not granted within SLOT_TAKEN_AFTER_S; ``on_takeover`` when it was taken over
    from a holder that was gone (see the module). SlotUnavailable naming ``where`` after
    ``wait_s``, or when the server fails; the block's own errors pass through untouched."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        ensure_slot(name)
        holder, takeover = _acquire(name, where, wait_s, on_wait)
    except TimeoutError:
        raise SlotUnavailable(f"{where} was not free within {wait_s:g} s{timeout_hint}") from None
    except (httpx.HTTPError, PrefectHTTPStatusError) as error:
        raise SlotUnavailable(f"{where}: the Prefect API at {api_url()} failed ({error})") from None
    if takeover is not None and on_takeover is not None:
        on_takeover(takeover)
    renewer = _Renewer(name, holder)
    renewer.start()
    try:
        yield
    finally:
        renewer.stop()
        _release(name, holder, renewer.lease_lost)


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL", "?"))


@contextmanager
def _client() -> Iterator[Any]:
    """A sync Prefect client that fails at once instead of retrying for a minute: a dead
    server is this module's to notice (the wait polls, the renewal ticks)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with (
        temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
        get_client(httpx_settings={"timeout": REQUEST_TIMEOUT_S}, sync_client=True) as client,
    ):
        yield client


def _acquire(
    name: str, where: str, wait_s: float, on_wait: Callable[[], None] | None
) -> tuple[SlotHolder, Takeover | None]:
    """Poll for the slot until ``wait_s``, taking it over from a holder that is gone. A busy
    server answers 503 now and then (its database locked by another waiter): asked again on
    the next poll, unless it keeps failing for TRANSIENT_S."""
    started = time.monotonic()
    waited = False
    stale: Takeover | None = None
    failing_since: float | None = None
    with _client() as client:
        while True:
            try:
                lease_id = _try_take(client, name)
                if lease_id is not None:
                    return _took(client, name, where, lease_id, stale)
                holder = read_holder(client, name)
                why = _gone(client, holder) if holder is not None else None
                if holder is not None and why is not None:
                    stale = Takeover(holder, why)
                    _free(client, name, holder)
                    continue
                failing_since = None
            except Exception as error:
                failing_since = failing_since or time.monotonic()
                if not _transient(error) or time.monotonic() - failing_since > TRANSIENT_S:
                    raise
            if not waited and on_wait and time.monotonic() - started >= SLOT_TAKEN_AFTER_S:
                waited = True
                on_wait()
            if time.monotonic() - started >= wait_s:
                raise TimeoutError
            time.sleep(POLL_S)


def _took(
    client: Any, name: str, where: str, lease_id: str, stale: Takeover | None
) -> tuple[SlotHolder, Takeover | None]:
    """The slot is ours: write our record; name a holder it was taken over from. Best effort
    past the lease (the renewal writes the record again)."""
    from prefect.runtime import flow_run

    now = time.time()
    holder = SlotHolder(
        lease_id=lease_id,
        flow_run_id=flow_run.get_id(),
        pid=os.getpid(),
        host=socket.gethostname(),
        where=where,
        since=now,
        renewed=now,
    )
    with suppress(Exception):
        previous = read_holder(client, name)
        _write_holder(client, name, holder)
        if stale is None and previous is not None and previous.lease_id != lease_id:
            # granted because its lease ran out: a holder that died, unless it was just slow
            # to clear its record after a release
            why = _gone(client, previous)
            stale = Takeover(previous, why) if why else None
        if stale is not None:
            stale = replace(stale, crashed=_crash_flow_run(client, stale))
    return holder, stale


def _transient(error: Exception) -> bool:
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(error, PrefectHTTPStatusError):
        return error.response.status_code in (408, 429, 500, 502, 503, 504)
    return isinstance(error, httpx.TransportError)


def _try_take(client: Any, name: str) -> str | None:
    """The new lease's id, or None while the slot is taken."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[name],
            slots=1,
            mode="concurrency",
            lease_duration=SLOT_LEASE_S,
            holder=ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None,
        )
    except PrefectHTTPStatusError as error:
        if error.response.status_code == LOCKED:
            return None
        raise
    body = response.json()
    if not body.get("limits"):  # deleted between ensure_slot and here
        raise SlotUnavailable(f"the Prefect global concurrency limit '{name}' does not exist")
    return str(body["lease_id"])


def read_holder(client: Any, name: str) -> SlotHolder | None:
    """The record the holder of ``name`` wrote (None: none, or not one of ours)."""
    variable = client.read_variable_by_name(record_name(name))
    if variable is None:
        return None
    try:
        value = variable.value if isinstance(variable.value, dict) else json.loads(variable.value)
        return SlotHolder(**value)
    except (TypeError, ValueError):
        return None


def _write_holder(client: Any, name: str, holder: SlotHolder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    value = asdict(holder)
    try:
        client.create_variable(VariableCreate(name=record_name(name), value=value))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=record_name(name), value=value))


def _gone(client: Any, holder: SlotHolder) -> str | None:
    """Why ``holder`` no longer holds its slot, or None while it may still."""
    if holder.flow_run_id:
        state = _flow_run_state(client, holder.flow_run_id)
        if state != "RUNNING":
            return f"the server says its flow run is {state or 'unknown to it'}"
    if holder.host == socket.gethostname() and not process_alive(holder.pid):
        return f"its process (pid {holder.pid}) is gone"
    silent = time.time() - holder.renewed
    if silent > SLOT_LEASE_S:
        return f"it has not renewed its lease for {silent:.0f} s"
    return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _flow_run_state(client: Any, flow_run_id: str) -> str | None:
    from prefect.exceptions import ObjectNotFound

    try:
        run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return None
    return run.state.type.value if run.state else None


def _free(client: Any, name: str, holder: SlotHolder) -> None:
    """Give back the slot a gone holder kept: its lease when the server still has it, else
    (a restarted server forgot the lease but not the count) the count itself. The record
    is read once more first: a holder that took it meanwhile keeps it."""
    client.release_concurrency_slots_with_lease(holder.lease_id)
    if _try_take_probe(client, name):
        return
    current = read_holder(client, name)
    if current is not None and current.lease_id == holder.lease_id:
        client.release_concurrency_slots(
            names=[name], slots=1, occupancy_seconds=max(1.0, time.time() - holder.since)
        )


def _try_take_probe(client: Any, name: str) -> bool:
    """Whether the slot reads free now (no lease taken)."""
    limit = client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots < limit.limit


def _crash_flow_run(client: Any, takeover: Takeover) -> bool:
    """The gone holder's flow run, if it still reads RUNNING on the server, is CRASHED now."""
    from prefect.states import Crashed

    run_id = takeover.holder.flow_run_id
    if not run_id or _flow_run_state(client, run_id) != "RUNNING":
        return False
    message = f"{takeover.why}; its slot was taken over by pid {os.getpid()}"
    client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    return True


class _Renewer:
    """Renews the lease and the holder's record in a daemon thread until stopped. A failed
    renewal is tried again on the next tick; a server that forgot the lease (restarted) leaves
    the slot counted as taken: the record still says who holds it, and ``lease_lost`` tells
    the release to give back the count itself."""

    def __init__(self, name: str, holder: SlotHolder) -> None:
        self.name = name
        self.holder = holder
        self.lease_lost = False
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the API URL a command set for its flows
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), daemon=True, name=f"slot-renewal-{name}"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S)

    def _run(self) -> None:
        from prefect.exceptions import PrefectHTTPStatusError

        while not self._stop.wait(RENEW_EVERY_S):
            with suppress(Exception), _client() as client:  # tried again on the next tick
                if not self.lease_lost:
                    try:
                        client.renew_concurrency_lease(self.holder.lease_id, SLOT_LEASE_S)
                    except PrefectHTTPStatusError as error:
                        if error.response.status_code not in (404, 410):
                            raise
                        self.lease_lost = True
                current = read_holder(client, self.name)
                if current is not None and current.lease_id != self.holder.lease_id:
                    return  # taken over: another process judged this one gone
                if not self._stop.is_set():
                    self.holder = replace(self.holder, renewed=time.time())
                    _write_holder(client, self.name, self.holder)


def _release(name: str, holder: SlotHolder, lease_lost: bool) -> None:
    """Give the slot back and clear the record; with the server gone, the lease runs out
    and the next holder takes over from the record."""
    with suppress(Exception), _client() as client:
        if lease_lost:
            client.release_concurrency_slots(
                names=[name], slots=1, occupancy_seconds=max(1.0, time.time() - holder.since)
            )
        else:
            client.release_concurrency_slots_with_lease(holder.lease_id)
        current = read_holder(client, name)
        if current is not None and current.lease_id == holder.lease_id:
            client.delete_variable_by_name(record_name(name))

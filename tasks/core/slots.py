"""Prefect global concurrency limits of one slot: a lock held across every process (and
machine) that reports to the Prefect server ``PREFECT_API_URL`` names. The server leases the
slot, so a holder that dies frees it after the lease.

Used for the registry lock over a remote MLflow store and for one training run at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

from tasks.core.errors import MlcycleError

SLOT_TAKEN_AFTER_S = 2.0  # a free slot is granted well within this


class SlotUnavailable(MlcycleError):
    """The slot stayed taken, or the Prefect server could not be asked for it."""


def ensure_slot(name: str) -> None:
    """Create the limit ``name`` with one slot unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    # ObjectAlreadyExists: another process created it first (the upsert is not atomic)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)


@contextmanager
def holding_slot(
    name: str,
    where: str,
    wait_s: float,
    on_wait: Callable[[], None] | None = None,
    timeout_hint: str = "",
) -> Iterator[None]:
    """Hold the slot of ``name`` (created when missing) for the block. ``on_wait`` runs once if
    the slot is not granted within SLOT_TAKEN_AFTER_S (a timer: a failed quick try would log a
    Prefect service error of its own). SlotUnavailable naming ``where`` after ``wait_s``, or
    when the server fails; the block's own errors pass through untouched."""
    import httpx
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import PrefectHTTPStatusError

    with ExitStack() as stack:
        try:
            ensure_slot(name)
            timer = threading.Timer(SLOT_TAKEN_AFTER_S, on_wait) if on_wait else None
            if timer is not None:
                timer.start()
                stack.callback(timer.cancel)
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_s, strict=True))
            if timer is not None:
                timer.cancel()
        except TimeoutError:
            raise SlotUnavailable(
                f"{where} was not free within {wait_s:g} s{timeout_hint}"
            ) from None
        except (httpx.HTTPError, PrefectHTTPStatusError) as error:
            raise SlotUnavailable(
                f"{where}: the Prefect API at {os.environ['PREFECT_API_URL']} failed ({error})"
            ) from None
        yield

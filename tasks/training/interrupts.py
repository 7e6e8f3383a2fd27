"""Ctrl-C during a search, delivered where it cannot break a record.

A KeyboardInterrupt raised inside a write to Optuna's storage (a trial's report, its user
attributes) interrupts the database commit; Optuna then fails its own ``tell`` and the trial
stays RUNNING for ever (a third of the Ctrl-Cs of a storage-heavy trial did, in a loop of 32).
So during a search SIGINT is held while records are written and raised where the work is
compute: inside ``fit``, between a trial's epochs, after a trial was told.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class HeldInterrupts:
    """SIGINT raises KeyboardInterrupt at once inside ``delivered()`` blocks; anywhere else it
    waits for the next ``delivered()`` block, the end of a ``held()`` one inside it, or
    ``raise_if_pending()``."""

    def __init__(self) -> None:
        self.deliver_now = False
        self.pending = False

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.deliver_now:
            raise KeyboardInterrupt
        self.pending = True

    def raise_if_pending(self, *_: Any) -> None:
        """Raise the held Ctrl-C, if one came (an Optuna callback's signature works too)."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextmanager
    def delivered(self) -> Iterator[None]:
        outer, self.deliver_now = self.deliver_now, True
        try:
            self.raise_if_pending()
            yield
        finally:
            self.deliver_now = outer

    @contextmanager
    def held(self) -> Iterator[None]:
        outer, self.deliver_now = self.deliver_now, False
        try:
            yield
        finally:
            self.deliver_now = outer
        if outer:
            self.raise_if_pending()


@contextmanager
def holding_interrupts() -> Iterator[HeldInterrupts]:
    """Hold SIGINT in this block (see the module); one that came is raised when it ends. Off the
    main thread, where no handler can be set, Ctrl-C is left as it was."""
    interrupts = HeldInterrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, interrupts.on_sigint)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupts.raise_if_pending()

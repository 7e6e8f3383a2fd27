"""Child processes that stop when mlcycle stops, and never outlive it.

A pipeline run starts processes of its own: ``dvc repro`` (which starts a stage through a
shell), a temporary Prefect API server. Each runs in a session of its own, so a Ctrl-C in the
terminal reaches only ``mlcycle``, which then stops them in order (the flow first records how
the run ended).

``python -m tasks.core.processes PARENT_PID COMMAND...`` is the guard each one runs under: the
leader of that session, it asks the kernel for SIGTERM when its parent dies (Linux
``PR_SET_PDEATHSIG``), runs COMMAND, and on that signal ends the whole group: so a ``kill -9``
of ``mlcycle`` takes down DVC, the shell DVC starts and the stage under it. (A death signal on
each process alone is not enough: ``/bin/sh -c`` does not always ``exec`` its command, and a
stage's parent shell outlives DVC.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
STOP_GRACE_S = 5.0
# How long a Ctrl-C'd group may take to finish its records before SIGKILL: a search trial's
# MLflow run and Optuna's tell take a second on an idle machine, over 5 s on a loaded one.
INTERRUPT_GRACE_S = 30.0


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT: a BaseException,
    so no ``except Exception`` swallows it and Prefect records the run as crashed."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies; if the parent is
    already gone (it died before this ran), send it now. A no-op where prctl is missing."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signum)


def start_group(command: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start ``command`` under the guard, in a session of its own that ends with this process
    (see the module)."""
    guarded = [sys.executable, "-m", "tasks.core.processes", str(os.getpid()), *command]
    return subprocess.Popen(guarded, start_new_session=True, **popen)


def stop_group(process: subprocess.Popen, grace_s: float = INTERRUPT_GRACE_S) -> None:
    """Stop a process started by :func:`start_group` and everything it started: SIGINT (its
    Python code cleans up, DVC releases its locks), then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    for signum, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def supervise(parent_pid: int, command: Sequence[str]) -> int:
    """The guard's body (see the module): COMMAND's exit code, or 128 + the signal that ended
    it."""
    # A stop's SIGINT reaches the whole group and is COMMAND's to handle: the guard waits. A
    # handler, not SIG_IGN, which COMMAND would inherit.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, raise_terminated)
    die_with_parent()
    if os.getppid() != parent_pid:
        return 143  # the parent died while this was starting
    child = subprocess.Popen(command)
    try:
        code = child.wait()
    except Terminated:  # the parent died (or someone ended the guard): end everything
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE_S)
        finally:
            os.killpg(0, signal.SIGKILL)  # what is left of the group, the guard too
        raise
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(supervise(int(sys.argv[1]), sys.argv[2:]))

"""Child processes that stop when mlcycle stops, and never outlive it.

A pipeline run starts processes of its own: ``dvc repro`` (which starts a stage), a temporary
Prefect API server. Each runs in a session of its own, so a Ctrl-C in the terminal reaches only
``mlcycle``, which then stops them in order (the flow first records how the run ended). Each
also asks the kernel for a signal when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a
``kill -9`` of ``mlcycle`` takes them down too.

``python -m tasks.core.processes PARENT_PID COMMAND...`` is that guard: it sets the signal and
then becomes COMMAND (``exec``), or exits at once if PARENT_PID is already gone.
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
    """Start ``command`` in a session of its own, dying with this process (see the module)."""
    guarded = [sys.executable, "-m", "tasks.core.processes", str(os.getpid()), *command]
    return subprocess.Popen(guarded, start_new_session=True, **popen)


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a process started by :func:`start_group` and everything it started: SIGINT (its
    Python code cleans up, DVC releases its locks), then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    for signum, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    parent_pid, *command = sys.argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the exec'd command installs its own
    die_with_parent()
    if os.getppid() != int(parent_pid):
        sys.exit(143)  # the parent died while this was starting
    os.execvp(command[0], command)

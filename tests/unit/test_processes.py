"""The guard that keeps a run's child processes from outliving it (tasks.core.processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tasks.core.processes import start_group, stop_group
from tests.helpers import live_processes

# A parent that starts a group through the guard (a shell that does not exec its last command,
# as dash does for DVC's stages), says the group's id, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import sys, time
    from tasks.core.processes import start_group
    group = start_group(["/bin/sh", "-c", "sleep 120; exit 0"])
    print(group.pid, flush=True)
    time.sleep(120)
    """
)


def members(group_id: int) -> list[int]:
    """The live (not zombie) processes of process group ``group_id``."""
    return [p.pid for p in live_processes() if p.group == group_id and p.state != "Z"]


def wait_until_empty(group_id: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while members(group_id):
        assert time.monotonic() < deadline, f"group {group_id} outlived its parent"
        time.sleep(0.1)


def test_kill_9_of_the_parent_ends_the_whole_group_shell_and_grandchild_included():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert parent.stdout is not None
    group_id = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while len(members(group_id)) < 3:  # guard, shell, sleep
        assert time.monotonic() < deadline, members(group_id)
        time.sleep(0.05)

    parent.kill()
    parent.wait()
    wait_until_empty(group_id)


def test_a_stop_ends_the_group_and_reports_the_command_exit_code():
    group = start_group(["/bin/sh", "-c", "sleep 120; exit 0"])
    deadline = time.monotonic() + 10
    while len(members(group.pid)) < 3:
        assert time.monotonic() < deadline, members(group.pid)
        time.sleep(0.05)
    stop_group(group, grace_s=5)
    wait_until_empty(group.pid)
    assert group.returncode == 128 + signal.SIGINT  # the shell died of the stop's SIGINT


def test_the_guard_passes_the_command_exit_code_on():
    assert start_group(["/bin/sh", "-c", "exit 7"]).wait() == 7

"""Trust in the registry (issue 19, items 1, 2 and 4), each fault as the try-out met it: a model
file swapped in the artifact store, `mlcycle promote` and `mlcycle rollback` started together,
and version numbers typed loosely.

The project: a workspace with a real MLflow SQLite store (artifacts in ``mlartifacts/`` beside
it) and three versions trained for real: v1 (the first champion), v2 (champion, replaced v1)
and v3 (a challenger).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.core.lineage import TAG_CHECK, TAG_MODEL_MD5, TAG_PREVIOUS_CHAMPION
from tasks.registry.check import LoadCheckFailed
from tasks.registry.gate import promote_if_better
from tasks.registry.lock import registry_lock
from tasks.registry.manual import promote, rollback
from tasks.registry.restore import restore
from tasks.registry.store import (
    CHAMPION,
    TAG_CHECK_REASON,
    TAG_CHECK_RECORD,
    RegistryError,
    alias_map,
)
from tasks.registry.versions import create_version
from tasks.serving.model import NoModelError, load_served_model
from tests.integration.helpers import BIN, GIT_IDENTITY, Workspace, make_workspace, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NAME = "trust"
STRONG = {"accuracy": 2.0, "macro_f1": 2.0}  # beats any champion at the gate
WEAK = {"accuracy": 0.0, "macro_f1": 0.0}  # never beats one


@pytest.fixture
def project(tracking_store, processed_dir, tiny_params, prefect_server, tmp_path) -> Workspace:
    """v1 champion first, then v2 (champion, replaced v1), then v3 (challenger)."""
    workspace = make_workspace(tmp_path / "ws", processed_dir, tiny_params, NAME, prefect_server)
    workspace.register(workspace.train(seed=1))
    workspace.register(replace(workspace.train(seed=2), metrics=STRONG))
    workspace.register(replace(workspace.train(seed=3), metrics=WEAK))
    assert alias_map(NAME)[CHAMPION] == "2"
    return workspace


def mlcycle(project: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "mlcycle"), *args], cwd=project.root, check=False)


def model_file_of(project: Workspace, version: str) -> Path:
    """The weights file of a version in the artifact store (mlartifacts/models/<id>/...)."""
    model_id = MlflowClient().get_model_version(NAME, version).source.removeprefix("models:/")
    store = project.root.parent / "mlartifacts"
    found = [p for p in store.rglob("model.pt") if model_id in str(p)]
    assert len(found) == 1, found
    return found[0]


def version_tags() -> dict[str, dict[str, str]]:
    client = MlflowClient()
    return {str(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{NAME}'")}


# Item 1: the load-back check proves identity.


def test_a_model_file_swapped_in_the_artifact_store_is_refused(project: Workspace):
    """v2's model.pt copied over v3's: `mlcycle promote 3` used to pass ("scores 64 test
    images as the local model does") and serve v2's answers as v3."""
    shutil.copyfile(model_file_of(project, "2"), model_file_of(project, "3"))
    recorded = version_tags()["3"][TAG_MODEL_MD5]

    result = mlcycle(project, "promote", "3")

    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(
        f"mlcycle: error: version 3 of '{NAME}' failed the load-back check: its model file in "
        "the artifact store has md5 "
    ), error
    assert f"but it was registered with md5 {recorded} (mlcycle.model_md5)" in error
    assert alias_map(NAME)[CHAMPION] == "2"  # no alias moved
    tags = version_tags()["3"]
    assert tags[TAG_CHECK] == "failed"
    assert "registered with md5" in tags[TAG_CHECK_REASON]
    # Serving refuses it too (at start and at every reload); v2 is itself and serves.
    with pytest.raises(NoModelError, match="version 3 of 'trust' is refused: its model file"):
        load_served_model(NAME, "challenger", version="3")
    assert load_served_model(NAME, "champion").version == "2"


def test_the_gate_refuses_a_swapped_version_and_moves_no_alias(project: Workspace):
    """Registering a model file again reuses its version: its artifact must still be it."""
    candidate = project.train(seed=4)
    registered = create_version(candidate, NAME)
    shutil.copyfile(model_file_of(project, "2"), model_file_of(project, registered.version))
    with pytest.raises(LoadCheckFailed, match="its model file in the artifact store has md5"):
        project.register(replace(candidate, metrics=STRONG))
    assert alias_map(NAME)[CHAMPION] == "2"
    assert version_tags()[registered.version][TAG_CHECK] == "failed"


def test_a_version_scoring_its_check_images_otherwise_is_refused(project: Workspace):
    """With a model file no md5 can vouch for (one the version records no md5 of, as versions
    of other tools), the recorded scores still tell: v3 swapped to v2's weights scores its
    check images as v2 does."""
    tags = version_tags()["3"]
    assert TAG_CHECK_RECORD in tags  # recorded at registration
    MlflowClient().delete_model_version_tag(NAME, "3", TAG_MODEL_MD5)
    shutil.copyfile(model_file_of(project, "2"), model_file_of(project, "3"))
    with pytest.raises(LoadCheckFailed, match=r"scores its \d+ check images differently"):
        promote(NAME, "3", project.params.registry, project.processed)
    assert alias_map(NAME)[CHAMPION] == "2"
    assert "differently from its registration" in version_tags()["3"][TAG_CHECK_REASON]


# Item 2: every alias move reads and writes under the registry lock.


def test_promote_and_rollback_started_together_leave_a_line(project: Workspace):
    """`mlcycle promote 3` and `mlcycle rollback` started while the lock is held: the rollback
    used to read champion v2 outside the lock and, after the promotion, jump to v1."""
    environment = {
        **os.environ,
        **GIT_IDENTITY,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    outputs: dict[str, list[str]] = {}
    processes: dict[str, subprocess.Popen] = {}
    readers = []
    with registry_lock(NAME):
        # One after the other, each once it waits for the lock: two temporary Prefect servers
        # starting at the same instant in one PREFECT_HOME trip over each other's migrations.
        for command in (["promote", "3"], ["rollback"]):
            key = command[0]
            outputs[key] = []
            processes[key] = subprocess.Popen(
                [str(BIN / "mlcycle"), *command],
                cwd=project.root,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            readers.append(
                threading.Thread(target=_collect, args=(processes[key], outputs[key]), daemon=True)
            )
            readers[-1].start()
            deadline = time.monotonic() + 240
            while not any("registry: waiting" in line for line in outputs[key]):
                assert time.monotonic() < deadline, outputs
                assert processes[key].poll() is None, outputs
                time.sleep(0.2)
    for name, process in processes.items():
        assert process.wait(timeout=240) == 0, "\n".join(outputs[name])
    for reader in readers:
        reader.join(10)
    promoted = next(line for line in outputs["promote"] if "champion is now version 3" in line)
    rolled = next(
        line for line in outputs["rollback"] if "champion rolled back from version" in line
    )
    moves = [_promote_move(promoted), _rollback_move(rolled)]
    assert _is_a_line(moves, "2", alias_map(NAME)[CHAMPION]), moves


def _collect(process: subprocess.Popen, lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())


def _promote_move(line: str) -> tuple[str, str]:
    """From "trust: champion is now version 3 (was 2)"."""
    return line.split("(was ")[1].rstrip(")"), "3"


def _rollback_move(line: str) -> tuple[str, str]:
    """From "trust: champion rolled back from version 3 to version 2"."""
    words = line.split()
    return words[-4], words[-1]


def _is_a_line(moves: list[tuple[str, str]], start: str, end: str) -> bool:
    """Whether the moves, in some order, make a chain from ``start`` to ``end``: each move's
    "from" the previous move's "to"."""
    for order in itertools.permutations(moves):
        at = start
        for source, target in order:
            if source != at:
                break
            at = target
        else:
            if at == end:
                return True
    return False


class _Waiters(logging.Handler):
    """Counts the "registry: waiting" lines: who has reached the held lock."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("registry: waiting"):
            self.count += 1


@pytest.mark.parametrize("order", list(itertools.permutations(("promote", "rollback", "gate"))))
def test_promote_rollback_and_the_gate_race_in_any_order_and_leave_a_line(
    project: Workspace, order: tuple[str, ...]
):
    """Started in ``order`` while the registry lock is held, then let go together: whatever
    order they take the lock in, each move starts where the one before ended."""
    gate_candidate = replace(project.train(seed=4), metrics=STRONG)
    gate_version = create_version(gate_candidate, NAME)
    moves: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def the_gate() -> None:
        registration = promote_if_better(
            gate_candidate, gate_version, project.params.registry, project.processed
        )
        if registration.promoted:
            moves.append((registration.previous_champion or "none", registration.version))

    actions = {
        "promote": lambda: moves.append(
            (promote(NAME, "3", project.params.registry, project.processed) or "none", "3")
        ),
        "rollback": lambda: moves.append(
            rollback(NAME, project.params.registry, project.processed)
        ),
        "gate": the_gate,
    }

    def guarded(action):
        def body() -> None:
            try:
                action()
            except RegistryError as error:  # e.g. "already the champion": no move, no harm
                errors.append(error)

        return body

    waiters = _Waiters()
    registry_log = logging.getLogger("mlcycle.registry")
    level = registry_log.level
    registry_log.setLevel(logging.INFO)  # the "waiting" line is an INFO one
    registry_log.addHandler(waiters)
    try:
        with registry_lock(NAME):
            threads = []
            for name in order:
                threads.append(threading.Thread(target=guarded(actions[name]), daemon=True))
                threads[-1].start()
                deadline = time.monotonic() + 60
                while waiters.count < len(threads):  # this one waits before the next starts
                    assert time.monotonic() < deadline, f"{name} never waited for the lock"
                    time.sleep(0.05)
        for thread in threads:
            thread.join(120)
    finally:
        registry_log.removeHandler(waiters)
        registry_log.setLevel(level)
    assert not any(thread.is_alive() for thread in threads)
    assert all("already the champion" in str(e) for e in errors), errors
    assert _is_a_line(moves, "2", alias_map(NAME)[CHAMPION]), (order, moves, errors)
    assert len(moves) + len(errors) == 3


# Item 4: version arguments are parsed strictly.


@pytest.mark.parametrize("typed", ["1 ", "01"])
def test_a_loosely_typed_version_is_refused_and_writes_nothing(project: Workspace, typed: str):
    """`mlcycle promote "1 "` tagged the healthy v1 load_check=failed; `mlcycle promote 01`
    promoted v1 "over itself" and erased its rollback record."""
    before = version_tags(), alias_map(NAME)

    result = mlcycle(project, "promote", typed)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"mlcycle: error: version {typed!r} is not a version number: give it as `mlcycle "
        "models` lists it (a whole number from 1, without sign, spaces, decimals or leading "
        "zeros, e.g. 3)"
    )
    assert (version_tags(), alias_map(NAME)) == before


def test_every_path_that_takes_a_version_refuses_loose_ones_first(project: Workspace):
    before = version_tags(), alias_map(NAME)
    for typed in ("01", " 1", "1\n", "+1", "1.0", "0", "-1", "", "\u0661"):
        with pytest.raises(RegistryError, match="is not a version number"):
            promote(NAME, typed, project.params.registry, project.processed)
        with pytest.raises(RegistryError, match="is not a version number"):
            restore(NAME, typed, project.root)
    assert (version_tags(), alias_map(NAME)) == before


def test_a_rollback_record_that_is_no_version_number_is_refused(project: Workspace):
    MlflowClient().set_model_version_tag(NAME, "2", TAG_PREVIOUS_CHAMPION, "01")
    before = version_tags(), alias_map(NAME)
    with pytest.raises(RegistryError, match=r"version 2's tag mlcycle\.previous_champion '01'"):
        rollback(NAME, project.params.registry, project.processed)
    assert (version_tags(), alias_map(NAME)) == before

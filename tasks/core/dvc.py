"""DVC, through its Python API (``dvc.repo.Repo``): staleness, content hashes, push, pull, checkout.

One way for each need. The single subprocess (:func:`reproduce_stage`) is explained where it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tasks.core.config import flatten
from tasks.core.console import run_logger
from tasks.core.errors import MlcycleError, shown_path
from tasks.core.files import file_md5
from tasks.core.paths import DVC_LOCK, PROCESSED_DIR, RAW_DIR
from tasks.core.processes import start_group, stop_group

# What `dvc repro` prints around a stage that says nothing about it (the flow pushes the data
# and the lock file is the pipeline's to commit).
DVC_HINTS = (
    "Running stage",
    "Updating lock file",
    "To track the changes with git",
    "git add ",
    "To enable auto staging",
    "dvc config core.autostage",
    "Use `dvc push`",
)
# the data a model version's lineage names (tasks.core.lineage.Lineage)
DATA_OUTPUTS = (RAW_DIR.as_posix(), PROCESSED_DIR.as_posix())


class DvcError(MlcycleError):
    """DVC could not do what was asked (a stage failed, the remote is unreachable ...)."""


@contextmanager
def open_repo(root: Path = Path()) -> Iterator[Any]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        yield repo


MODIFIED_ON_DISK = "modified on disk"  # what verified_data_versions reads for changed files


def data_versions(root: Path = Path()) -> dict[str, str]:
    """DVC content hashes of the data outputs, as ``dvc.lock`` records them ({} before a run)."""
    with _data_outputs(root) as outputs:
        return {out.def_path: out.hash_info.value for out in outputs}


def verified_data_versions(root: Path = Path()) -> dict[str, str]:
    """:func:`data_versions`, with the files on disk re-hashed by DVC: an output whose files
    differ from ``dvc.lock`` (changed, or gone) reads :data:`MODIFIED_ON_DISK`."""
    with _data_outputs(root) as outputs:
        return {
            out.def_path: MODIFIED_ON_DISK if out.workspace_status() else out.hash_info.value
            for out in outputs
        }


@contextmanager
def _data_outputs(root: Path) -> Iterator[list[Any]]:
    """The data outputs ``dvc.lock`` records a hash for, while the repository is open."""
    from dvc.exceptions import DvcException

    if not (root / DVC_LOCK).is_file():
        yield []
        return
    try:
        with open_repo(root) as repo:
            yield [
                out
                for stage in repo.index.stages
                for out in stage.outs
                if out.def_path in DATA_OUTPUTS and out.hash_info
            ]
    except DvcException as error:
        raise DvcError(f"DVC could not read {root / DVC_LOCK}: {error}") from None


def locked_params(root: Path = Path()) -> dict[str, Any]:
    """The params values ``dvc.lock`` says the stages ran with, as dotted keys (a section a
    stage depends on whole, such as ``train.cnn``, is spread into its keys)."""
    from dvc.dependency.param import ParamsDependency

    if not (root / DVC_LOCK).is_file():
        return {}
    values: dict[str, Any] = {}
    with open_repo(root) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency) and dep.hash_info:
                    values.update(flatten(dep.hash_info.value))
    return values


class CorruptData(DvcError):
    """A file DVC counts as up to date whose bytes are not what ``dvc.lock`` records."""


def stage_is_stale(stage: str) -> bool:
    """Whether DVC would run this stage now (changed deps, params or missing outputs).

    A stage about to run first has the files it reads from other stages (and ``.dvc`` files)
    hashed afresh against ``dvc.lock``: DVC trusts its own record of a file it checked out,
    so a corrupt cache object brought by ``dvc checkout`` (or restored from the run-cache)
    reads "up to date" until a stage fails deep inside a reader (``BadZipFile: Bad CRC-32 for
    file 'images.npy'``). CorruptData names the file instead.
    """
    with open_repo() as repo:
        stale = bool(repo.status(targets=[stage]))
        if stale:
            verify_stage_inputs(repo, stage)
        return stale


def verify_stage_inputs(repo: Any, stage: str) -> None:
    """CorruptData for the first input of ``stage`` whose bytes differ from ``dvc.lock``."""
    stages = list(repo.index.stages)
    target = next((s for s in stages if s.addressing == stage), None)
    if target is None:
        return
    read = [Path(dep.def_path) for dep in target.deps]
    for out in (out for s in stages if s is not target for out in s.outs):
        files = [
            (path, md5)
            for path, md5 in recorded_files(out)
            if any(path == dep or dep in path.parents for dep in read)
        ]
        # A change DVC sees (new data under a `dvc add`ed path, an edited output) is DVC's to
        # handle: only what it counts as unchanged is hashed afresh.
        if files and not out.workspace_status():
            for path, md5 in files:
                check_recorded_file(repo, out, path, md5)


def recorded_files(out: Any) -> list[tuple[Path, str]]:
    """(path, md5) of each file of a DVC output as its lock entry records it (a folder's
    through its ``.dir`` listing in the cache); [] where it is not recorded in plain md5."""
    if not out.hash_info or out.hash_info.name != "md5" or not out.use_cache:
        return []
    root = Path(out.def_path)
    if not out.is_dir_checksum:
        return [(root, out.hash_info.value)]
    listing = out.get_obj()
    if listing is None:  # the listing is not in the cache: DVC itself reports that
        return []
    return [(root.joinpath(*key), info.value) for key, (_, info) in listing.iteritems()]


def check_recorded_file(repo: Any, out: Any, path: Path, md5: str) -> None:
    if not path.is_file():
        return  # missing: DVC reports it as a changed output (and reruns its stage)
    if file_md5(path) == md5:
        return
    cached = Path(repo.cache.local.oid_to_path(md5))
    differs = (
        f"{path}: its bytes are not what dvc.lock records (md5 {md5}), though DVC counts it up "
        "to date"
    )
    if cached.is_file() and file_md5(cached) != md5:
        raise CorruptData(
            f"{differs}; its DVC cache object {shown_path(cached)} is damaged: remove it, then "
            f"`dvc pull {out.def_path}` (or `dvc repro --force {out.stage.addressing}`) and "
            "run again"
        )
    raise CorruptData(
        f"{differs}; `dvc checkout --relink --force {out.def_path}` restores it from the DVC "
        "cache (`dvc fetch` first if the cache lacks it), then run again"
    )


def push_data(root: Path = Path()) -> int:
    """Send the DVC-tracked outputs of the repository at ``root`` to its default remote;
    returns how many files moved."""
    logger = run_logger("mlcycle.dvc")
    with open_repo(root) as repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            logger.info("dvc push: no default remote configured, data stays local")
            return 0
        pushed = repo.push()
    logger.info("dvc push: %d file(s) sent to remote '%s'", pushed, remote)
    return pushed


def track_file(root: Path, path: Path) -> None:
    """``dvc add <path>``: version a file the pipeline reads but no stage writes (the exported
    feedback), so a ``.dvc`` file beside it records which content a run used and ``dvc push``
    stores it; that ``.dvc`` file is the caller's to commit (DVC's own hint saying so is left
    out). ``path``: absolute, or relative to ``root``."""
    from dvc.exceptions import DvcException

    target = path if path.is_absolute() else root / path
    try:
        with open_repo(root) as repo:
            repo.scm_context.quiet = True
            repo.add(str(target.absolute()))
    except DvcException as error:
        raise DvcError(f"dvc add {path} failed: {error}") from None


def pull_outputs(root: Path = Path()) -> None:
    from dvc.exceptions import DvcException

    try:
        with open_repo(root) as repo:
            repo.pull(force=True)
    except DvcException as error:
        raise DvcError(
            f"dvc pull failed: {error}; is the DVC remote the one the pipeline pushed to? "
            "(`dvc remote list`)"
        ) from None


def checkout_quietly(root: Path = Path()) -> None:
    """Make the outputs match ``dvc.lock`` again, from the cache; best effort (a cleanup)."""
    from dvc.exceptions import DvcException

    if (root / DVC_LOCK).is_file():
        with suppress(DvcException), open_repo(root) as repo:
            repo.checkout(force=True)


class CrashLine:
    """The last exception line of a Python traceback in a stage's output (``zipfile.
    BadZipFile: Bad CRC-32 for file 'images.npy'``), read line by line."""

    def __init__(self) -> None:
        self.line: str | None = None
        self._in_traceback = False

    def read(self, line: str) -> None:
        if line.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
        elif self._in_traceback and not line[:1].isspace():
            if line.startswith(("During handling", "The above exception")):
                return
            self.line = line
            self._in_traceback = False


def reproduce_stage(stage: str, env: Mapping[str, str]) -> Iterator[str]:
    """``dvc repro --single-item <stage>``, yielding its output lines as they come (DVC's
    routine hints left out); DvcError naming the stage's ``error:`` line, else DVC's, if it
    fails.

    A subprocess, not ``Repo.reproduce``: the stage's output must stream line by line into the
    Prefect log (in-process, DVC prints to our stdout only when the stage ends), and the stage
    runs in a process group of its own that a stop ends (``tasks.core.processes``) while the
    flow lives on to record how the run ended.
    """
    tail: deque[str] = deque(maxlen=5)
    crash = CrashLine()
    process = start_group(
        # Not --quiet: it hides DVC's own errors too (a path it cannot write: exit 255, no
        # line); its routine hints are left out below instead.
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **env,
            "PYTHONUNBUFFERED": "1",
            # dvc.yaml says `python -m ...`: make that the interpreter running this flow.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        },
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line and not line.lstrip().startswith(DVC_HINTS):
                tail.append(line)
                crash.read(line)
                yield line
        process.wait()
    finally:  # a stop (Ctrl-C, SIGTERM) or an error here: the stage must not run on
        stop_group(process)
        if process.stdout is not None:
            process.stdout.close()
    if process.returncode != 0:
        # a stage's own one-line error (stage_main), else DVC's
        errors = [line for line in tail if line.startswith(("error: ", "ERROR: "))]
        detail = next(
            (e for e in errors if e.startswith("error: ")), errors[-1] if errors else None
        )
        if detail and detail.startswith("error: "):
            reason = detail.split(": ", 1)[1]
        elif crash.line:  # a bug in the stage: its exception's line, not "exited with 1"
            reason = f"{crash.line} (its traceback is in the log above)"
        elif detail:
            reason = re.sub(r"^failed to reproduce '[^']*': ", "", detail.split(": ", 1)[1])
        else:
            reason = f"see the log above (last line: {tail[-1]})" if tail else "no output"
        raise DvcError(f"stage '{stage}' failed: {reason}")

"""Helpers shared by the tests (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.files import ImageDataset
from tasks.validation.gate import ValidationPlaces

REPO_ROOT = Path(__file__).resolve().parent.parent


# Small enough to train in a second on CPU, big enough to be a real CNN.
TINY_OVERRIDES = (
    "train.epochs=2",
    "train.batch_size=32",
    "train.cnn.channels=[8, 16]",
    "train.cnn.hidden_size=32",
    "train.mlp.hidden_sizes=[32]",
    "train.device=cpu",
    "evaluate.baseline_max_iter=200",
    "validate.min_rows=10",
    # Well above chance (0.1 on ten digits) and below the 0.87 this 2-epoch CNN scores on the
    # digits' test split: a model that learned nothing is refused here as in params.yaml (0.9).
    "registry.min_score=0.5",
)


# The docs' "within seconds" (an unreachable server, a refusal): what a person waits for at a
# prompt, not MLflow's or Prefect's minutes of retries. A command's own start-up (imports) comes
# on top: tests.integration.helpers.mlcycle_within_seconds measures it beside.
WITHIN_SECONDS = 10.0


@dataclass(frozen=True)
class FirstRun:
    """The session's trained template: a clone that ran `mlcycle run` once, and what it said."""

    root: Path
    output: str  # all the command printed (stdout, then stderr)


def md5(path: Path) -> str:
    """The MD5 of a file's bytes, as DVC and the model's tags record it ("the same bytes")."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LiveProcess:
    """One process of this machine, as /proc shows it at the moment it was read."""

    pid: int
    group: int  # its process group
    state: str  # R, S, Z (a zombie: ended, not yet reaped) ...
    command: str  # its command line, arguments joined by spaces
    cwd: Path | None  # its working folder (None where it cannot be read)


def live_processes() -> list[LiveProcess]:
    """Every process /proc lists now (Linux); one that ends while it is read is left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the fields after the command's name, which may hold spaces and parentheses
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
        try:
            cwd: Path | None = Path(os.readlink(entry / "cwd"))
        except OSError:
            cwd = None
        found.append(LiveProcess(int(entry.name), int(fields[2]), fields[0], command, cwd))
    return found


def free_port() -> int:
    """A loopback port nobody listens on (for servers we start, or to test refusals)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthetic_dataset(
    per_class: int = 12,
    num_classes: int = 3,
    shape: tuple[int, int, int] = (8, 8, 1),
    seed: int = 0,
) -> ImageDataset:
    """Learnable images: each class lights up its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    height = shape[0]
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.int64)
    band = max(1, height // num_classes)
    for index, label in enumerate(labels):
        images[index, label * band : (label + 1) * band] += 180
    order = rng.permutation(len(labels))
    return ImageDataset(
        np.clip(images, 0, 255).astype(np.uint8)[order],
        labels.astype(np.int64)[order],
        tuple(f"class_{k}" for k in range(num_classes)),
    )


def make_places(root: Path):
    """A copy of the repository's GX project under ``root``; validation writes beside it."""
    import shutil

    shutil.copytree(REPO_ROOT / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    return ValidationPlaces(root / "gx", root / "reports", root / "quarantine")


def copy_shipped_files(target: Path, leave_out: tuple[str, ...] = ("tests/",)) -> Path:
    """This repository's files as git would ship them (untracked, not ignored ones too) into
    ``target``, without ``dvc.lock`` (a run's lock file is an output, not part of the project)
    and the folders in ``leave_out``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if name == "dvc.lock" or name.startswith(leave_out) or not source.is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    return target

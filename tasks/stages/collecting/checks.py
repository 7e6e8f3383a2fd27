"""What every source passes before it is read: it lies inside ``data/external`` (the collect
stage's DVC dependency) and is a plain file; and the error a source raises when it does not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tasks.core.errors import MlcycleError


class DataSourceError(MlcycleError):
    """A source is missing, unreadable or not in the shape the canonical format needs."""


def inside_external(path: Path, external_dir: Path, what: str) -> None:
    """DataSourceError unless ``path``, symlinks followed, lies inside ``external_dir``."""
    resolved, root = path.resolve(), external_dir.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        written = Path(os.path.normpath(path.absolute()))
        via = f" (through a symlink, to {resolved})" if written != resolved else ""
        raise DataSourceError(
            f"{what} {path} is outside {external_dir}/{via}. DVC watches only {external_dir}/ "
            "for changes, so later runs would train on stale data. Bring the data in: copy it "
            f"under {external_dir}/ (or `dvc import` / `dvc add` it there) and point "
            "collect.source at that copy"
        )


def regular_file(path: Path, external_dir: Path) -> None:
    """A source file must be a plain file inside ``external_dir``: a device (a symlink to
    /dev/zero), a pipe or a socket would hang or feed garbage."""
    inside_external(path, external_dir, "source file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise DataSourceError(
            f"{path}: not a regular file (a device, pipe or socket); expected image files only"
        )


def shape_text(shape: tuple[int, ...]) -> str:
    """``(28, 28, 1)`` as ``28x28x1``, as messages show an image's shape."""
    return "x".join(str(size) for size in shape)

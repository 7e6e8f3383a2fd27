"""The ``npz:<path>`` source: an archive of ``images`` and ``labels`` (optional
``class_names``), read by the core reader under the source checks."""

from __future__ import annotations

from pathlib import Path

from tasks.core.files import ImageDataset
from tasks.core.image_npz import ImageNpzError, read_labelled_npz
from tasks.core.paths import EXTERNAL_DIR
from tasks.stages.collecting.checks import DataSourceError, regular_file


def load_npz(path: Path, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    """Arrays ``images`` (N, H, W) or (N, H, W, C) and ``labels`` (N,); optional ``class_names``."""
    if not path.is_file():
        raise DataSourceError(f"npz:{path}: file not found")
    regular_file(path, external_dir)
    try:
        return read_labelled_npz(path)
    except ImageNpzError as error:
        raise DataSourceError(str(error)) from None

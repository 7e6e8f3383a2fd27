"""The one reader of images kept in ``.npz`` archives (``numpy.savez``): collect's ``npz:``
source, the labelled feedback that serving exports, and the batches ``mlcycle monitor --batch``
scores. Every refusal is one line naming the file and the array.

An archive holds ``images`` (N, H, W) or (N, H, W, C), C grey or RGB, in uint8 or integers in
0..255, and optionally ``labels`` (one per image) and ``class_names``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset
from tasks.core.images import COLOUR_CHANNELS, ImageFormatError, uint8_pixels

IMAGES_KEY = "images"
LABELS_KEY = "labels"
CLASS_NAMES_KEY = "class_names"


class ImageNpzError(MlcycleError):
    """An ``.npz`` file that is not a readable archive of images (and labels)."""


@dataclass(frozen=True)
class ImageNpz:
    """An archive's arrays, checked: uint8 (N, H, W, C) images, at least one; ``labels`` as
    stored, one per image, and ``class_names`` as stored, where the archive has them."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: np.ndarray | None


def read_image_npz(path: Path) -> ImageNpz:
    """``images`` with their ``labels`` and ``class_names`` where present: what a batch to
    score holds. ImageNpzError, naming the file and array, for anything else."""
    arrays = _open(path, required=(IMAGES_KEY,))
    images, labels = _checked_arrays(path, arrays)
    return ImageNpz(_pixels(path, images), labels, arrays.get(CLASS_NAMES_KEY))


def read_labelled_npz(path: Path) -> ImageDataset:
    """A labelled dataset: ``images`` and ``labels`` (integers indexing ``class_names``, or
    any integers or strings without it: the sorted distinct values become the classes)."""
    arrays = _open(path, required=(IMAGES_KEY, LABELS_KEY))
    images, _ = _checked_arrays(path, arrays)
    label_ids, class_names = _encoded_labels(path, arrays[LABELS_KEY], arrays.get(CLASS_NAMES_KEY))
    return ImageDataset(_pixels(path, images), label_ids, class_names)


def _open(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The archive's arrays of interest, loaded; refused unless ``required`` are all there."""
    if not path.is_file():
        raise ImageNpzError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise ImageNpzError(
            f"{path}: not an .npz archive (a zip of .npy arrays, as numpy.savez writes)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            missing = [key for key in required if key not in found]
            if missing:
                raise ImageNpzError(
                    f"{path}: missing array {' and '.join(repr(key) for key in missing)} "
                    f"(expected {' and '.join(repr(key) for key in required)}; "
                    f"found {', '.join(found) or 'none'})"
                )
            wanted = (IMAGES_KEY, LABELS_KEY, CLASS_NAMES_KEY)
            return {key: archive[key] for key in wanted if key in found}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ImageNpzError(f"{path}: not a readable .npz file ({error})") from None


def _checked_arrays(
    path: Path, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` as (N, H, W, C), C grey or RGB, at least one, and ``labels`` (when there)
    one per image; their pixel type is checked later, once the labels have been."""
    images, labels = arrays[IMAGES_KEY], arrays.get(LABELS_KEY)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in COLOUR_CHANNELS:
        raise ImageNpzError(
            f"{path}: 'images' has shape {images.shape}; expected (N, H, W) or (N, H, W, C) "
            "with C 1 or 3"
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise ImageNpzError(
            f"{path}: 'images' holds {len(images)} samples but 'labels' has shape {labels.shape}; "
            "expected one label per image"
        )
    if len(images) == 0:
        raise ImageNpzError(f"{path}: 'images' is empty")
    return images, labels


def _encoded_labels(
    path: Path, labels: np.ndarray, names: np.ndarray | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """int64 class indices and the class names they index."""
    if names is not None:
        if labels.dtype.kind not in "iu":
            raise ImageNpzError(
                f"{path}: 'labels' must be integers indexing 'class_names', got {labels.dtype}"
            )
        bad = labels[(labels < 0) | (labels >= len(names))]
        if bad.size:
            raise ImageNpzError(
                f"{path}: label {bad[0]} is outside 'class_names' (0..{len(names) - 1})"
            )
        return labels.astype(np.int64), tuple(str(name) for name in names)
    if labels.dtype.kind not in "iuUSb":
        raise ImageNpzError(
            f"{path}: 'labels' has dtype {labels.dtype}; expected integers or strings"
        )
    classes, label_ids = np.unique(labels, return_inverse=True)
    return label_ids.astype(np.int64), tuple(str(value) for value in classes)


def _pixels(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        return uint8_pixels(images, f"{path}: 'images'")
    except ImageFormatError as error:
        raise ImageNpzError(str(error)) from None

"""The ``folder:<path>`` source: one sub-folder of images per class, named by the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.core.files import ImageDataset
from tasks.core.images import ImageFormatError, pixels_from_image
from tasks.core.paths import EXTERNAL_DIR
from tasks.stages.collecting.checks import DataSourceError, regular_file, shape_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(root: Path, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    """``root/<class name>/<image files>``; hidden files (``.DS_Store``) are ignored."""
    class_dirs = class_folders(root)
    images, labels = [], []
    first: tuple[Path, tuple[int, ...]] | None = None
    for label, class_dir in enumerate(class_dirs):
        files = visible_entries(class_dir)
        if not files:
            raise DataSourceError(f"folder:{root}: class folder {class_dir} holds no images")
        for path in files:
            pixels = read_image(path, external_dir)
            if first is None:
                first = (path, pixels.shape)
            elif pixels.shape != first[1]:
                raise DataSourceError(
                    f"{path}: image is {shape_text(pixels.shape)} but {first[0]} is "
                    f"{shape_text(first[1])}; all images must share one shape"
                )
            images.append(pixels)
            labels.append(label)
    return ImageDataset(
        np.stack(images), np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs)
    )


def visible_entries(folder: Path) -> list[Path]:
    """A folder's entries in name order, hidden ones (``.DS_Store``) left out."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, in name order: a class's label is its place here."""
    if not root.is_dir():
        raise DataSourceError(f"folder:{root}: folder not found")
    entries = visible_entries(root)
    stray = [path for path in entries if not path.is_dir()]
    if stray:
        raise DataSourceError(
            f"folder:{root}: {stray[0]} is a file; expected only one sub-folder per class"
        )
    if not entries:
        raise DataSourceError(f"folder:{root}: no class sub-folders found")
    return entries


def read_image(path: Path, external_dir: Path) -> np.ndarray:
    """One image file as uint8 (H, W, C) pixels; DataSourceError naming it if it is none."""
    from PIL import Image, UnidentifiedImageError

    if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataSourceError(f"{path}: not an image file (expected {' '.join(IMAGE_SUFFIXES)})")
    regular_file(path, external_dir)
    try:
        with Image.open(path) as image:
            return pixels_from_image(image, path)
    except (UnidentifiedImageError, OSError) as error:
        raise DataSourceError(f"{path}: cannot decode image ({error})") from None
    except ImageFormatError as error:
        raise DataSourceError(str(error)) from None

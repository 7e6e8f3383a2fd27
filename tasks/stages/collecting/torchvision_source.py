"""The ``torchvision:<Name>`` source: a torchvision dataset (MNIST, FashionMNIST, KMNIST,
CIFAR10 ...) from ``collect.root``, its train and test parts joined: we split it ourselves."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.files import ImageDataset
from tasks.core.images import COLOUR_CHANNELS, ImageFormatError, uint8_pixels
from tasks.stages.collecting.checks import DataSourceError

# The constructor arguments that pick a part, by the keyword a dataset class takes.
PARTS_BY_KEYWORD = {
    "train": ({"train": True}, {"train": False}),
    "split": ({"split": "train"}, {"split": "test"}),
}


def load_torchvision(name: str, root: Path, download: bool) -> ImageDataset:
    """Train and test parts of a torchvision dataset, concatenated; we split it ourselves.
    ``download`` lets torchvision fetch missing files."""
    dataset_class = torchvision_class(name)
    images, labels, class_names = [], [], None
    for part in dataset_parts(name, dataset_class):
        loaded = load_part(name, dataset_class, root, download, part)
        part_images, part_labels = _torchvision_arrays(loaded)
        images.append(part_images)
        labels.append(part_labels)
        class_names = class_names or _torchvision_classes(loaded)
    all_labels = np.concatenate(labels)
    if class_names is None or len(class_names) <= int(all_labels.max()):
        class_names = tuple(str(label) for label in range(int(all_labels.max()) + 1))
    return ImageDataset(np.concatenate(images), all_labels, tuple(class_names))


def torchvision_class(name: str) -> type:
    """torchvision's dataset class ``name``; DataSourceError if it has none."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, name, None)
    if not (
        inspect.isclass(dataset_class)
        and issubclass(dataset_class, torchvision.datasets.VisionDataset)
    ):
        raise DataSourceError(
            f"torchvision:{name}: torchvision has no dataset {name!r} "
            "(expected a class such as MNIST, FashionMNIST, KMNIST or CIFAR10)"
        )
    return dataset_class


def dataset_parts(name: str, dataset_class: type) -> tuple[dict[str, Any], ...]:
    """The constructor arguments of the dataset's train and test parts."""
    parameters = inspect.signature(dataset_class).parameters
    for keyword, parts in PARTS_BY_KEYWORD.items():
        if keyword in parameters:
            return parts
    raise DataSourceError(
        f"torchvision:{name}: unsupported, it takes neither train= nor split= arguments"
    )


def load_part(
    name: str, dataset_class: type, root: Path, download: bool, part: dict[str, Any]
) -> object:
    """One part of the dataset; its missing files named in one DataSourceError."""
    try:
        return dataset_class(root=str(root), download=download, **part)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError ...
        wanted = ", ".join(str(path) for path in expected_torchvision_files(dataset_class, root))
        hint = (
            "the download failed (is there network access?)"
            if download
            else "set collect.download=true to fetch them, or copy them there"
        )
        raise DataSourceError(
            f"torchvision:{name}: dataset files not found or unreadable under {root} "
            f"(looked for {wanted}); {hint} [{type(error).__name__}: {error}]"
        ) from None


def expected_torchvision_files(dataset_class: type, root: Path) -> list[Path]:
    """Where a torchvision dataset looks for its files, for error messages."""
    resources = getattr(dataset_class, "resources", None)
    if resources:  # MNIST, FashionMNIST, KMNIST, QMNIST ...: <root>/<Class>/raw/<file>
        raw_folder = root / dataset_class.__name__ / "raw"
        return [raw_folder / Path(entry[0]).name.removesuffix(".gz") for entry in resources]
    base_folder = getattr(dataset_class, "base_folder", None)
    if base_folder:  # CIFAR10, CIFAR100: <root>/<base_folder>/<batch files>
        listed = [
            *getattr(dataset_class, "train_list", []),
            *getattr(dataset_class, "test_list", []),
        ]
        return [root / base_folder / entry[0] for entry in listed] or [root / base_folder]
    return [root / dataset_class.__name__]


def _torchvision_arrays(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if data is not None and targets is not None:
        images = np.asarray(data)
        labels = np.asarray(targets, dtype=np.int64)
    else:  # datasets without in-memory arrays: decode sample by sample
        samples = [dataset[index] for index in range(len(dataset))]  # type: ignore[arg-type]
        images = np.stack([np.asarray(image) for image, _ in samples])
        labels = np.asarray([label for _, label in samples], dtype=np.int64)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if (
        images.ndim == 4
        and images.shape[1] in COLOUR_CHANNELS
        and images.shape[-1] not in COLOUR_CHANNELS
    ):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C), as SVHN stores
    try:
        return uint8_pixels(images, "torchvision data"), labels
    except ImageFormatError as error:
        raise DataSourceError(str(error)) from None


def _torchvision_classes(dataset: object) -> tuple[str, ...] | None:
    classes = getattr(dataset, "classes", None)
    return tuple(str(name) for name in classes) if classes else None

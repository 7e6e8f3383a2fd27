"""collect: bring a dataset from its source into the canonical ``data/raw`` format.

Sources: ``sklearn-digits`` (embedded, the default), ``torchvision:<Name>`` (MNIST,
FashionMNIST, KMNIST, CIFAR10 ... from ``collect.root``), ``folder:<path>`` (one sub-folder of
images per class) and ``npz:<path>`` (arrays ``images`` and ``labels``). With
``collect.feedback``, the served images people labelled (``data/external/feedback.npz``, which
``tasks.core.prediction_log.export`` exports) are added to the source's.

``collect.augment_to`` grows sklearn-digits to MNIST scale without a download: the 1,797 digits
upscaled to 28x28, then random affine copies of them (seeded by ``collect.seed``), with
``groups.npy`` naming each image's original so that preprocess keeps copies of one digit in one
split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.config import CollectParams, load_params
from tasks.core.console import stage_main
from tasks.core.files import ImageDataset, write_raw_dataset
from tasks.core.paths import EXTERNAL_DIR, FEEDBACK_FILE, RAW_DIR
from tasks.stages.collecting.augment import augment_digits, augment_facts
from tasks.stages.collecting.checks import DataSourceError, inside_external, shape_text
from tasks.stages.collecting.digits import load_sklearn_digits
from tasks.stages.collecting.folder import load_image_folder
from tasks.stages.collecting.npz import load_npz
from tasks.stages.collecting.torchvision_source import load_torchvision

log = logging.getLogger("mlcycle.collect")

MIN_CLASSES = 2  # fewer is no classification
FILE_SOURCES = ("folder", "npz")  # the sources read from a path of their own


@dataclass(frozen=True)
class CollectResult:
    raw_dir: Path
    num_samples: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    feedback_samples: int = 0  # of num_samples, the labelled served images added


def run_collect(
    params: CollectParams, raw_dir: Path = RAW_DIR, external_dir: Path = EXTERNAL_DIR
) -> CollectResult:
    """Load ``params.source`` and write it to ``raw_dir`` (images, labels, meta.json).

    Sources on disk must lie inside ``external_dir`` (``data/external``), which dvc.yaml
    declares as the stage's dependency: data read from anywhere else could change without DVC
    noticing, and later runs would train on stale data."""
    dataset = load_source(params, external_dir)
    groups, facts = None, {}
    if params.augment_to is not None:
        originals = len(dataset.labels)
        dataset, groups = augment_digits(dataset, params.augment_to, params.seed)
        facts["augment"] = augment_facts(originals, params.augment_to, params.seed)
    added = 0
    if params.feedback:  # only then: without it, meta.json stays byte for byte as it was
        feedback_file = external_dir / FEEDBACK_FILE.name
        dataset, added = add_feedback(dataset, feedback_file, params.source, external_dir)
        groups = feedback_groups(groups, added)
        facts["feedback_samples"] = added
    write_raw_dataset(dataset, raw_dir, source=params.source, groups=groups, facts=facts)
    height, width, channels = dataset.image_shape
    log.info(
        "collect: %d images of %dx%dx%d in %d classes from %s -> %s",
        len(dataset.labels),
        height,
        width,
        channels,
        len(dataset.class_names),
        params.source,
        raw_dir,
    )
    return CollectResult(
        raw_dir, len(dataset.labels), dataset.image_shape, dataset.class_names, added
    )


def feedback_groups(groups: np.ndarray | None, added: int) -> np.ndarray | None:
    """The groups of the source's images followed by the ``added`` labelled ones, each a group
    of its own; None stays None (data without groups.npy)."""
    if groups is None:
        return None
    return np.concatenate([groups, groups.max() + 1 + np.arange(added, dtype=np.int64)])


def add_feedback(
    dataset: ImageDataset, path: Path, source: str, external_dir: Path = EXTERNAL_DIR
) -> tuple[ImageDataset, int]:
    """``dataset`` with the labelled served images of ``path`` appended, classes matched by
    name, and how many were added. No file yet: the dataset as it is (nobody labelled any)."""
    if not path.is_file():
        log.info("collect: no labelled feedback yet (%s not found); %s alone", path, source)
        return dataset, 0
    feedback = load_npz(path, external_dir)
    if feedback.image_shape != dataset.image_shape:
        raise DataSourceError(
            f"{path}: feedback images are {shape_text(feedback.image_shape)} but {source}'s "
            f"are {shape_text(dataset.image_shape)}; they were labelled on a model serving "
            "other data. Export the feedback again once the served model takes this source's "
            "images, or delete the file (and its .dvc file), or set collect.feedback=false"
        )
    position = {name: index for index, name in enumerate(dataset.class_names)}
    used = [feedback.class_names[index] for index in np.unique(feedback.labels)]
    unknown = [name for name in used if name not in position]
    if unknown:
        raise DataSourceError(
            f"{path}: class {unknown[0]!r} is not a class of {source} "
            f"({', '.join(dataset.class_names)}); the feedback was labelled on a model with "
            "other classes. Relabel or delete those predictions, delete the file (and its .dvc "
            "file), or set collect.feedback=false"
        )
    mapping = np.asarray([position.get(name, -1) for name in feedback.class_names], np.int64)
    log.info("collect: %d labelled feedback images added from %s", len(feedback.labels), path)
    combined = ImageDataset(
        np.concatenate([dataset.images, feedback.images]),
        np.concatenate([dataset.labels, mapping[feedback.labels]]),
        dataset.class_names,
    )
    return combined, len(feedback.labels)


def load_source(params: CollectParams, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    """The dataset ``params.source`` names, from its adapter; at least two classes."""
    check_source_location(params, external_dir)
    kind, _, argument = params.source.partition(":")
    if kind == "sklearn-digits":
        dataset = load_sklearn_digits()
    elif kind == "torchvision":
        dataset = load_torchvision(argument, Path(params.root), params.download)
    elif kind == "folder":
        dataset = load_image_folder(Path(argument), external_dir)
    elif kind == "npz":
        dataset = load_npz(Path(argument), external_dir)
    else:  # params validation already rejects these; kept for callers that bypass it
        raise DataSourceError(f"collect.source: unknown source {params.source!r}")
    if len(dataset.class_names) < MIN_CLASSES:
        raise DataSourceError(
            f"{params.source}: found {len(dataset.class_names)} class; "
            f"a classifier needs at least {MIN_CLASSES}"
        )
    return dataset


def check_source_location(params: CollectParams, external_dir: Path = EXTERNAL_DIR) -> None:
    """DataSourceError unless the source's files (and torchvision's root) are inside
    ``external_dir``: what ``mlcycle run`` checks before it writes params.yaml."""
    kind, _, argument = params.source.partition(":")
    if kind in FILE_SOURCES:
        inside_external(Path(argument), external_dir, f"collect.source {kind}:")
    elif kind == "torchvision":
        inside_external(Path(params.root), external_dir, "collect.root")


def main() -> None:
    params = load_params()
    run_collect(params.collect)


if __name__ == "__main__":
    stage_main(main)

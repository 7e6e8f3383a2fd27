"""preprocess: fit images to the model's input and split them, stratified and seeded.

Writes ``data/processed/{train,val,test}.npz`` (uint8 images, labels, rows of ``data/raw``) and
``preprocess.json`` with the normalisation statistics, computed on the train split only. The
statistics travel inside the trained model, so nothing downstream re-types them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import PreprocessParams, load_params
from tasks.core.console import stage_main
from tasks.core.errors import MlcycleError
from tasks.core.files import (
    SPLITS,
    ImageDataset,
    read_json,
    read_raw_dataset,
    read_raw_groups,
    write_splits,
)
from tasks.core.images import CHUNK, PIXEL_MAX, mean_and_std, prepare_images
from tasks.core.paths import PROCESSED_DIR, VALIDATED_DIR
from tasks.core.stage_run import WithoutFlow, stage_run
from tasks.validation.gate import (
    REPOSITORY_PLACES,
    ValidationPlaces,
    recording_validation,
    validate_splits,
)
from tasks.validation.profiles import content_hashes

log = logging.getLogger("mlcycle.preprocess")

CONSTANT_STD = 1e-6  # a channel's std below this is a constant channel: it is given std 1


class SplitError(MlcycleError):
    """The data cannot be split as asked (too few samples in a class, say)."""


@dataclass(frozen=True)
class PreprocessResult:
    processed_dir: Path
    split_sizes: dict[str, int]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def run_preprocess(
    params: PreprocessParams,
    validated_dir: Path = VALIDATED_DIR,
    processed_dir: Path = PROCESSED_DIR,
    places: ValidationPlaces = REPOSITORY_PLACES,
) -> PreprocessResult:
    """Fit, split and normalise ``data/validated``; the split is written only if it passes
    the ``processed_splits`` suite (no image in two splits), whose verdict goes to
    ``places.processed_report`` either way."""
    raw = read_raw_dataset(validated_dir)
    samples, source_shape = len(raw.labels), raw.image_shape
    images = prepare_images(raw.images, params.image_size, params.channels)
    dataset = ImageDataset(images, raw.labels, raw.class_names)
    hashes = content_hashes(dataset.images)
    siblings = read_raw_groups(validated_dir, samples)
    groups = hashes if siblings is None else linked_groups(hashes, siblings)
    indices = stratified_split(
        dataset.labels,
        dataset.class_names,
        params.val_fraction,
        params.test_fraction,
        params.seed,
        groups=groups,
    )
    mean, std = channel_statistics(dataset.images[indices["train"]])
    splits = {name: (dataset.subset(rows), rows) for name, rows in indices.items()}
    sizes = {name: len(rows) for name, rows in indices.items()}
    image_shape = dataset.image_shape
    # The splits hold copies of every image: let the whole array go before the gate profiles
    # them (at 1,000,000 images that is a third of this stage's peak memory).
    del raw, images, dataset
    info = {
        "class_names": list(splits["train"][0].class_names),
        "image_shape": list(image_shape),
        "source_image_shape": list(source_shape),
        "mean": list(mean),
        "std": list(std),
        "split_sizes": sizes,
        **row_origin_info(validated_dir, samples, groups if siblings is not None else None),
    }
    validate_splits(splits, hashes, info, places)
    write_splits(splits, processed_dir, info)
    log.info(
        "preprocess: %s images -> %s (stratified, seed %d); input %s; mean %s std %s (train only)",
        samples,
        " / ".join(f"{name} {size}" for name, size in sizes.items()),
        params.seed,
        "x".join(map(str, image_shape)),
        _rounded(mean),
        _rounded(std),
    )
    return PreprocessResult(processed_dir, sizes, image_shape, mean, std)


def row_origin_info(validated_dir: Path, samples: int, groups: np.ndarray | None) -> dict[str, Any]:
    """What preprocess.json adds about where the rows came from, each only when there is
    something to say, so that data without it keeps its preprocess.json byte for byte:
    ``split_groups`` (how many groups were split, for data with ``groups.npy``) and
    ``feedback_rows`` (the raw rows of labelled feedback: the monitoring reference can be the
    newest rows, see evaluate)."""
    info: dict[str, Any] = {}
    if groups is not None:
        info["split_groups"] = len(np.unique(groups))
    feedback = int(read_json(validated_dir / "meta.json").get("feedback_samples", 0))
    if feedback:
        info["feedback_rows"] = [samples - feedback, samples]
    return info


def stratified_split(
    labels: np.ndarray,
    class_names: tuple[str, ...],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices per split, each split holding every class in its overall proportion.

    Rows with the same ``groups`` value (identical images, by content hash, or copies of one
    original: :func:`linked_groups`) always land in the same split, so a duplicate can never
    leak from train into test. Groups are stratified by their first row's label and taken in
    order of first appearance: without duplicates this is exactly a split of the rows.
    """
    from sklearn.model_selection import train_test_split

    group_of_row, group_labels = ordered_groups(labels, groups)
    check_stratifiable(group_labels, class_names)
    group_ids = np.arange(len(group_labels))
    try:
        rest, test = train_test_split(
            group_ids, test_size=test_fraction, stratify=group_labels, random_state=seed
        )
        train, val = train_test_split(
            rest,
            test_size=val_fraction / (1.0 - test_fraction),
            stratify=group_labels[rest],
            random_state=seed,
        )
    except ValueError as error:
        raise SplitError(
            f"cannot stratify {len(group_labels)} distinct samples in {len(class_names)} classes "
            f"with val_fraction={val_fraction}, test_fraction={test_fraction}: {error}"
        ) from None
    return {
        name: np.flatnonzero(np.isin(group_of_row, chosen))
        for name, chosen in (("train", train), ("val", val), ("test", test))
    }


def ordered_groups(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group, numbered in order of first appearance, and each group's label (its
    first row's). No ``groups``: every row a group of its own."""
    if groups is None:
        groups = np.arange(len(labels))
    _, first, group_of_row = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    if len(order) < len(labels):
        log.info(
            "preprocess: %d images share a group (identical images, or copies of one original) "
            "and are kept in its split; %d groups split",
            len(labels) - len(order),
            len(order),
        )
    return rank[group_of_row], labels[first[order]]


def check_stratifiable(group_labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    """SplitError unless every class has a group for each of train, val and test."""
    counts = np.bincount(group_labels, minlength=len(class_names))
    too_few = [
        (name, int(count))
        for name, count in zip(class_names, counts, strict=True)
        if count < len(SPLITS)
    ]
    if too_few:
        listed = ", ".join(f"{name!r} has {count}" for name, count in too_few)
        raise SplitError(
            f"cannot stratify: class {listed} distinct sample(s); each class needs at least "
            f"{len(SPLITS)} (one per train/val/test split)"
        )


def linked_groups(hashes: np.ndarray, siblings: np.ndarray) -> np.ndarray:
    """One group id per row, joining rows with the same content hash *or* the same sibling
    group (``groups.npy``): identical images of two originals pull both originals' copies
    into one group, so neither rule is broken. Connected components of the graph whose nodes
    are the hashes and the sibling groups, each row an edge between its two."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, hash_node = np.unique(hashes, return_inverse=True)
    _, sibling_node = np.unique(siblings, return_inverse=True)
    hash_nodes = int(hash_node.max()) + 1
    nodes = hash_nodes + int(sibling_node.max()) + 1
    edges = coo_matrix(
        (np.ones(len(hashes), dtype=np.int32), (hash_node, hash_nodes + sibling_node)),
        shape=(nodes, nodes),
    )
    _, component = connected_components(edges, directed=False)
    return component[hash_node].astype(np.int64)


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels scaled to 0..1; a constant channel gets std 1."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), CHUNK):
        pixels = images[start : start + CHUNK].reshape(-1, channels)
        chunk = pixels.astype(np.float64) / float(PIXEL_MAX)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    mean, std = mean_and_std(total, total_sq, images.size // channels)
    std[std < CONSTANT_STD] = 1.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _rounded(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{value:.3f}" for value in values) + "]"


def main() -> None:
    params = load_params()
    # Under the flow, the split's verdict (pass or fail) is logged into the flow's MLflow run.
    with (
        stage_run(params, "preprocess", WithoutFlow.NOTHING) as tracker,
        recording_validation(tracker, REPOSITORY_PLACES.processed_report),
    ):
        run_preprocess(params.preprocess)


if __name__ == "__main__":
    stage_main(main)

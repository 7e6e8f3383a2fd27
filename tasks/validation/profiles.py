"""Profiles: images are not tables, so each sample becomes one row (label, shape, dtype, pixel
range, mean, std, non-finite count, blank flag, content hash, class counts ...), in chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.files import ImageDataset
from tasks.core.images import mean_and_std

PROFILE_CHUNK = 16384  # images per profiling chunk: bounds the temporary arrays to ~50 MB
HASH_BYTES = np.dtype(np.int64).itemsize  # a content hash is one int64 column of the profile


def content_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit BLAKE2b hash of each image's bytes, as int64; chunked to bound memory. The
    only per-image Python loop of validation."""
    count = len(images)
    flat = images.reshape(count, int(np.prod(images.shape[1:])))
    hashes = np.empty(count, dtype=np.int64)
    blake2b = hashlib.blake2b
    for start in range(0, count, PROFILE_CHUNK):
        rows = np.ascontiguousarray(flat[start : start + PROFILE_CHUNK])
        digests = b"".join([blake2b(row, digest_size=HASH_BYTES).digest() for row in rows])
        hashes[start : start + len(rows)] = np.frombuffer(digests, dtype=np.int64)
    return hashes


def profile_images(
    images: np.ndarray, labels: np.ndarray, declared_class_counts: np.ndarray | None = None
) -> Any:
    """One row per sample: the table the ``raw_samples`` suite checks. Vectorised in chunks.

    ``declared_class_counts[k]`` is what meta.json says class ``k`` holds; labels outside it
    get NaN there (and fail the class-set expectation anyway).
    """
    import pandas as pd

    count = len(images)
    height, width, channels = images.shape[1:]
    pixels = pixel_summaries(images)
    frame = pd.DataFrame(
        {
            "label": labels,
            "height": np.full(count, height, dtype=np.int64),
            "width": np.full(count, width, dtype=np.int64),
            "channels": np.full(count, channels, dtype=np.int64),
            "dtype": pd.Categorical.from_codes(np.zeros(count, dtype=np.int8), [str(images.dtype)]),
            "min": pixels.lowest,
            "max": pixels.highest,
            "mean": pixels.mean,
            "std": pixels.std,
            "nonfinite": pixels.nonfinite,
            "blank": (pixels.lowest == pixels.highest).astype(np.int64),
            "hash": content_hashes(images),
        }
    )
    frame["conflicting_label"] = (
        frame.groupby("hash", sort=False)["label"].transform("nunique") > 1
    ).astype(np.int64)
    frame["class_count"] = frame.groupby("label", sort=False, dropna=False)["label"].transform(
        "size"
    )
    frame["class_share"] = frame["class_count"] / max(count, 1)
    frame["declared_class_count"] = _declared_counts(labels, declared_class_counts)
    return frame


@dataclass(frozen=True)
class PixelSummaries:
    """Per image: its lowest and highest pixel, their mean and std, and how many are not
    finite (NaN or infinite; always 0 for integer pixels)."""

    lowest: np.ndarray
    highest: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    nonfinite: np.ndarray


def pixel_summaries(images: np.ndarray) -> PixelSummaries:
    """:class:`PixelSummaries` of every image, in chunks of PROFILE_CHUNK images."""
    count = len(images)
    pixels = int(np.prod(images.shape[1:]))
    flat = images.reshape(count, pixels)
    lowest, highest, mean, std = (np.empty(count) for _ in range(4))
    nonfinite = np.zeros(count, dtype=np.int64)
    integer = images.dtype.kind in "iub"
    for start in range(0, count, PROFILE_CHUNK):
        chunk = np.asarray(flat[start : start + PROFILE_CHUNK])
        part = slice(start, start + len(chunk))
        if chunk.size == 0:  # zero-sized images: nothing to summarise
            lowest[part] = highest[part] = mean[part] = std[part] = np.nan
            continue
        lowest[part] = chunk.min(axis=1)
        highest[part] = chunk.max(axis=1)
        if images.dtype == np.uint8:  # exact integer sums: fast and no rounding
            total = chunk.sum(axis=1, dtype=np.int64)
            wide = chunk.astype(np.uint16)
            squares = (wide * wide).sum(axis=1, dtype=np.int64)
        else:
            values = chunk.astype(np.float64)
            if not integer:
                finite = np.isfinite(values)
                nonfinite[part] = pixels - finite.sum(axis=1)
                values = np.where(finite, values, 0.0)
            total = values.sum(axis=1)
            squares = np.square(values).sum(axis=1)
        mean[part], std[part] = mean_and_std(total, squares, pixels)
    return PixelSummaries(lowest, highest, mean, std, nonfinite)


def _declared_counts(labels: np.ndarray, declared: np.ndarray | None) -> np.ndarray:
    result = np.full(len(labels), np.nan)
    if declared is None or labels.dtype.kind not in "iu":
        return result
    inside = (labels >= 0) & (labels < len(declared))
    result[inside] = declared[labels[inside]]
    return result


def profile_splits(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]], hashes: np.ndarray
) -> Any:
    """One row per processed sample, for ``processed_splits``; its index is the sample's row in
    ``data/raw``, and ``hashes[row]`` the hash of its processed image."""
    import pandas as pd

    frame = pd.concat(
        [
            pd.DataFrame({"split": name, "label": dataset.labels, "hash": hashes[rows]}, index=rows)
            for name, (dataset, rows) in splits.items()
        ]
    )
    frame["hash_splits"] = frame.groupby("hash", sort=False)["split"].transform("nunique")
    return frame

"""``collect.augment_to``: sklearn-digits grown to MNIST scale without a download.

The 1,797 digits are upscaled to 28x28, then random affine copies of them are drawn (seeded by
``collect.seed``); each image's original is its group, so that preprocess keeps copies of one
digit in one split.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from tasks.core.files import ImageDataset
from tasks.core.images import PIXEL_MAX
from tasks.stages.collecting.checks import DataSourceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("mlcycle.collect")


# MNIST's layout, a 28x28 frame with the digit in its central 20x20 box (its bilinear edge
# fades out one pixel beyond) ...
AUGMENTED_SIDE = 28
DIGIT_BOX = 20
# ... and transforms that keep a digit a digit: a 6 turned by 15 degrees is still no 9, and
# at 1.1x plus a 2-pixel shift the 20x20 box still fits inside the frame.
MAX_ROTATION_DEGREES = 15.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHEAR = 0.15  # x moves by shear * y: a slant of up to about 8.5 degrees
MAX_SHIFT_PIXELS = 2.0
# Images warped at once: the chunk's float32 grid and samples stay near 80 MB whatever
# augment_to is (measured at 1M images: faster than 4096 or 16384 on a busy 2-core machine).
AUGMENT_CHUNK = 8192
PROGRESS_FROM = 100_000  # augment_to sizes that log their progress ...
PROGRESS_STEPS = 10  # ... every tenth of the way


# rotation (degrees), scale, shear, shift x, shift y (pixels): the columns of a transform row
IDENTITY_TRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0)


def augment_digits(
    originals: ImageDataset, augment_to: int, seed: int
) -> tuple[ImageDataset, np.ndarray]:
    """``augment_to`` images of 28x28: first every original upscaled once, in order, then
    random affine copies cycling through the originals (image ``i`` comes from original
    ``i % len(originals)``), so every class keeps its share. The second array is each image's
    original, its group: preprocess keeps a group in one split, so no copy of a test digit
    trains the model."""
    count = len(originals.labels)
    if augment_to < count:
        raise DataSourceError(
            f"collect.augment_to is {augment_to} but sklearn-digits has {count} images; "
            f"expected at least {count} (each digit once, upscaled to {AUGMENTED_SIDE}x"
            f"{AUGMENTED_SIDE}, then random affine copies up to augment_to), or null to keep "
            "the 8x8 originals"
        )
    started = time.perf_counter()
    groups = np.arange(augment_to, dtype=np.int64) % count
    identity = np.tile(IDENTITY_TRANSFORM, (count, 1))
    transforms = np.concatenate([identity, random_transforms(augment_to - count, seed)])
    images = warp_digits(originals.images, groups, sampling_coefficients(transforms))
    log.info(
        "collect: %d digits upscaled to %dx%d plus %d random affine copies (seed %d) in %.1fs",
        count,
        AUGMENTED_SIDE,
        AUGMENTED_SIDE,
        augment_to - count,
        seed,
        time.perf_counter() - started,
    )
    return ImageDataset(images, originals.labels[groups], originals.class_names), groups


def random_transforms(copies: int, seed: int) -> np.ndarray:
    """(copies, 5) transforms, uniform in the ranges above. Drawn at once, in one stream, so
    the output does not depend on how the warp is chunked."""
    low = (-MAX_ROTATION_DEGREES, SCALE_RANGE[0], -MAX_SHEAR, -MAX_SHIFT_PIXELS, -MAX_SHIFT_PIXELS)
    high = (MAX_ROTATION_DEGREES, SCALE_RANGE[1], MAX_SHEAR, MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS)
    return np.random.default_rng(seed).uniform(low, high, size=(copies, len(low)))


def sampling_coefficients(transforms: np.ndarray) -> np.ndarray:
    """Per transform, float32 (a, b, c, d, e, f): the output pixel at (x, y) pixels from the
    frame's centre reads the source at ``grid_sample``'s normalised (a x + b y + c,
    d x + e y + f).

    A transform moves the digit's point p (pixels from the box's centre) to
    ``scale * rotation @ shear @ p + shift``; sampling needs the inverse. ``rotation @ shear``
    has determinant 1, so its inverse is its adjugate. The source spans the DIGIT_BOX box,
    whose half is 1 in normalised coordinates."""
    angle = np.deg2rad(transforms[:, 0])
    scale, shear = transforms[:, 1], transforms[:, 2]
    shift_x, shift_y = transforms[:, 3], transforms[:, 4]
    cos, sin = np.cos(angle), np.sin(angle)
    to_source = 2.0 / (DIGIT_BOX * scale)
    a = (cos + shear * sin) * to_source
    b = (sin - shear * cos) * to_source
    d = -sin * to_source
    e = cos * to_source
    c = -(a * shift_x + b * shift_y)
    f = -(d * shift_x + e * shift_y)
    return np.stack([a, b, c, d, e, f], axis=1).astype(np.float32)


def warp_digits(originals: np.ndarray, groups: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Image ``i``: original ``groups[i]`` resampled (bilinear, black outside the digit's
    box) with ``coefficients[i]``, as (N, 28, 28, 1) uint8. Chunked into a preallocated
    output: memory is the output plus about 80 MB, whatever N is."""
    import torch
    import torch.nn.functional as functional

    count = len(groups)
    out = np.empty((count, AUGMENTED_SIDE, AUGMENTED_SIDE, 1), dtype=np.uint8)
    tensor = torch.from_numpy  # shares the array's memory: no copy
    written = tensor(out)[..., 0]
    sources = tensor(originals[..., 0].astype(np.float32)).unsqueeze(1)
    source_of = tensor(groups)
    grid_buffer = torch.empty((AUGMENT_CHUNK, AUGMENTED_SIDE, AUGMENTED_SIDE, 2))
    for start in range(0, count, AUGMENT_CHUNK):
        stop = min(start + AUGMENT_CHUNK, count)
        grid = grid_buffer[: stop - start]
        fill_sampling_grid(grid, coefficients[start:stop])
        samples = functional.grid_sample(
            sources[source_of[start:stop]],
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        written[start:stop] = samples[:, 0].round_().clamp_(0, PIXEL_MAX)
        log_progress(start, stop, count)
    return out


def fill_sampling_grid(grid: torch.Tensor, coefficients: np.ndarray) -> None:
    """``grid[n, row y, column x]`` = (source x, source y) of output pixel (x, y) of image
    ``n``, from its sampling coefficients."""
    import torch

    tensor = torch.from_numpy
    # pixel centres, from the frame's centre: -13.5 .. 13.5
    centres = np.arange(AUGMENTED_SIDE, dtype=np.float32) - (AUGMENTED_SIDE - 1) / 2
    a, b, c, d, e, f = (column[:, None] for column in coefficients.T)
    # The per-row and per-column terms are small: numpy makes them without waking torch's
    # thread pool, whose wake-ups are what a busy machine makes slow (3x at 1M images).
    grid[..., 0] = tensor((b * centres)[:, :, None]) + tensor((a * centres + c)[:, None])
    grid[..., 1] = tensor((e * centres)[:, :, None]) + tensor((d * centres + f)[:, None])


def log_progress(start: int, stop: int, count: int) -> None:
    """A line each time the warp passes another tenth of a large ``augment_to``."""
    if count >= PROGRESS_FROM and stop * PROGRESS_STEPS // count > start * PROGRESS_STEPS // count:
        log.info("collect: augment_to %d%% (%d of %d images)", stop * 100 // count, stop, count)


def augment_facts(originals: int, augment_to: int, seed: int) -> dict[str, object]:
    """What meta.json records about augment_to: enough to tell how the images were made."""
    return {
        "originals": originals,
        "copies": augment_to - originals,
        "seed": seed,
        "image_side": AUGMENTED_SIDE,
        "digit_box": DIGIT_BOX,
        "max_rotation_degrees": MAX_ROTATION_DEGREES,
        "scale_range": list(SCALE_RANGE),
        "max_shear": MAX_SHEAR,
        "max_shift_pixels": MAX_SHIFT_PIXELS,
    }

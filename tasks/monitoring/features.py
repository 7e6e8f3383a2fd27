"""Per-image features: images are not tables, so each image becomes one row of numbers whose
distributions a drift test can compare (pixel statistics plus where the ink lies and how it is
spread, so that shifted and rotated digits move them too).

Shared by the reference the evaluate stage writes and the drift comparison, so both describe
images the same way. Vectorised in chunks: 100,000 8x8 images take well under a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.core.images import mean_and_std

# Values per chunk (images x pixels x channels): bounds the float32 temporaries to ~16 MB
# whatever the image size, where a fixed image count would not.
CHUNK_VALUES = 1 << 22

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "mean": "mean pixel value (0..255)",
    "std": "pixel standard deviation (contrast)",
    "min": "darkest pixel",
    "max": "brightest pixel",
    "blank": "1 when every pixel has the same value",
    "edge": "mean absolute step between neighbouring pixels, / 255 (sharpness, noise)",
    "border_mean": "mean brightness of the outermost ring of pixels (shift, noise, contrast)",
    "row_centre": "brightness-weighted centre row, 0 top .. 1 bottom (vertical shift)",
    "col_centre": "brightness-weighted centre column, 0 left .. 1 right (horizontal shift)",
    "row_spread": "brightness-weighted standard deviation of the row, as a share of the height",
    "col_spread": "brightness-weighted standard deviation of the column, as a share of the width",
    "slant": "row-column covariance over total variance, -0.5..0.5 (rotation, shear)",
    "centre_share": "share of brightness inside the central half of the image (shift, zoom)",
}
FEATURES: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)


def image_features(images: np.ndarray) -> pd.DataFrame:
    """One row per image (uint8, N x H x W x C), one float64 column per name in ``FEATURES``.

    Spatial features use the channel mean as brightness; an image without any brightness has
    its centre in the middle and no spread, so no row is ever NaN.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    count = len(images)
    columns = {name: np.empty(count) for name in FEATURES}
    per_image = max(1, int(np.prod(images.shape[1:])))
    step = max(1, CHUNK_VALUES // per_image)
    for start in range(0, count, step):
        part = slice(start, min(start + step, count))
        for name, values in _chunk_features(np.asarray(images[part])).items():
            columns[name][part] = values
    return pd.DataFrame(columns, columns=list(FEATURES))


def _chunk_features(chunk: np.ndarray) -> dict[str, np.ndarray]:
    count, height, width, _ = chunk.shape
    flat = chunk.reshape(count, -1)
    values = flat.shape[1]
    if values == 0:  # zero-sized images: nothing to describe
        return {name: np.zeros(count) for name in FEATURES}
    lowest = flat.min(axis=1).astype(np.float64)
    highest = flat.max(axis=1).astype(np.float64)
    wide = flat.astype(np.uint16)  # exact integer sums: fast and no rounding
    mean, std = mean_and_std(
        flat.sum(axis=1, dtype=np.int64), (wide * wide).sum(axis=1, dtype=np.int64), values
    )
    grey = chunk.astype(np.float32).mean(axis=3)  # (n, H, W)
    features = {
        "mean": mean,
        "std": std,
        "min": lowest,
        "max": highest,
        "blank": (lowest == highest).astype(np.float64),
        "edge": _edge(grey),
        "border_mean": _border_mean(grey),
    }
    return features | _moments(grey, height, width)


def _edge(grey: np.ndarray) -> np.ndarray:
    steps = [
        np.abs(np.diff(grey, axis=axis)).mean(axis=(1, 2), dtype=np.float64)
        for axis in (1, 2)
        if grey.shape[axis] > 1
    ]
    return (sum(steps) / len(steps) / 255.0) if steps else np.zeros(len(grey))


def _border_mean(grey: np.ndarray) -> np.ndarray:
    """The ring is where a shifted digit's ink arrives and a centred one's never is: one
    feature that moves with shifts on either axis as well as with noise and contrast."""
    _, height, width = grey.shape
    total = grey.sum(axis=(1, 2), dtype=np.float64)
    inner = grey[:, 1:-1, 1:-1].sum(axis=(1, 2), dtype=np.float64)
    ring = height * width - max(height - 2, 0) * max(width - 2, 0)
    return (total - inner) / ring


def _moments(grey: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Image moments of brightness, on coordinates scaled to 0..1 so that sizes compare."""
    rows = np.linspace(0.0, 1.0, height) if height > 1 else np.full(1, 0.5)
    cols = np.linspace(0.0, 1.0, width) if width > 1 else np.full(1, 0.5)
    row_mass = grey.sum(axis=2, dtype=np.float64)  # (n, H)
    col_mass = grey.sum(axis=1, dtype=np.float64)  # (n, W)
    total = row_mass.sum(axis=1)
    empty = total <= 0
    safe = np.where(empty, 1.0, total)
    row_centre = np.where(empty, 0.5, row_mass @ rows / safe)
    col_centre = np.where(empty, 0.5, col_mass @ cols / safe)
    row_var = np.maximum(row_mass @ (rows * rows) / safe - row_centre**2, 0.0)
    col_var = np.maximum(col_mass @ (cols * cols) / safe - col_centre**2, 0.0)
    cross = np.einsum("nhw,h,w->n", grey, rows, cols, dtype=np.float64) / safe
    covariance = cross - row_centre * col_centre
    spread = row_var + col_var
    slant = np.where(empty | (spread <= 0), 0.0, covariance / np.where(spread > 0, spread, 1.0))
    top, left = height // 4, width // 4
    inner = grey[:, top : height - top, left : width - left].sum(axis=(1, 2), dtype=np.float64)
    return {
        "row_centre": row_centre,
        "col_centre": col_centre,
        "row_spread": np.where(empty, 0.0, np.sqrt(row_var)),
        "col_spread": np.where(empty, 0.0, np.sqrt(col_var)),
        "slant": slant,
        "centre_share": np.where(empty, 0.0, inner / safe),
    }

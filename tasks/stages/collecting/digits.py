"""The ``sklearn-digits`` source: scikit-learn's 1,797 embedded 8x8 digits, no download."""

from __future__ import annotations

import numpy as np

from tasks.core.files import ImageDataset
from tasks.core.images import PIXEL_MAX

DIGIT_LEVELS = 16  # scikit-learn's digits count ink from 0 to 16


def digit_pixels(intensities: np.ndarray) -> np.ndarray:
    """scikit-learn's (N, 8, 8) digit intensities, 0..16, as the canonical uint8 (N, 8, 8, 1)
    pixels, 0..255: the one scaling that collect and the tests share."""
    scaled = np.rint(intensities * (float(PIXEL_MAX) / float(DIGIT_LEVELS)))
    return scaled.astype(np.uint8)[..., np.newaxis]


def load_sklearn_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, rescaled from 0..16 to the canonical 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return ImageDataset(
        digit_pixels(digits.images),
        digits.target.astype(np.int64),
        tuple(str(name) for name in digits.target_names),
    )

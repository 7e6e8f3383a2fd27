"""The model tests' data: scikit-learn's digits, 70/15/15, stratified and seeded."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tasks.core.files import ImageDataset
from tasks.stages.collecting.digits import digit_pixels


@pytest.fixture(scope="session")
def digits() -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """The pipeline's default data, 70/15/15, pixels 0..16 -> 0..255 as collect stores them."""
    data = load_digits()
    images = digit_pixels(data.images)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, data.target, test_size=0.15, stratify=data.target, random_state=42
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.15 / 0.85, stratify=rest_y, random_state=42
    )
    names = tuple(str(c) for c in range(10))
    return tuple(  # type: ignore[return-value]
        ImageDataset(x, y.astype(np.int64), names)
        for x, y in ((train_x, train_y), (val_x, val_y), (test_x, test_y))
    )

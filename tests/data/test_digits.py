"""Expectations on the embedded dataset and on its split, made by the real stages."""

import hashlib
import json

import numpy as np
import pytest

from tasks.core.config import load_params
from tasks.core.files import SPLITS, read_raw_dataset
from tasks.stages.collect import run_collect
from tasks.stages.preprocess import run_preprocess
from tasks.stages.validate import run_validate
from tests.helpers import REPO_ROOT, make_places


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    params = load_params(REPO_ROOT / "params.yaml")
    root = tmp_path_factory.mktemp("digits")
    run_collect(params.collect, root / "raw")
    places = make_places(root)
    run_validate(params.validate, root / "raw", root / "validated", places)
    run_preprocess(params.preprocess, root / "validated", root / "processed", places)
    return params, root


def test_schema(digits):
    _, root = digits
    raw = read_raw_dataset(root / "raw")
    meta = json.loads((root / "raw" / "meta.json").read_text())
    assert raw.images.dtype == np.uint8 and raw.images.shape == (1797, 8, 8, 1)
    assert raw.labels.dtype == np.int64 and raw.labels.shape == (1797,)
    assert meta["image_shape"] == [8, 8, 1] and meta["num_samples"] == 1797


def test_label_set_and_balance(digits):
    _, root = digits
    raw = read_raw_dataset(root / "raw")
    assert set(raw.labels.tolist()) == set(range(10))
    counts = np.bincount(raw.labels)
    assert counts.min() >= 170 and counts.max() <= 190


def test_no_blank_images(digits):
    _, root = digits
    images = read_raw_dataset(root / "raw").images
    spread = np.ptp(images.reshape(len(images), -1), axis=1)
    assert (spread > 0).all()


def test_splits_have_the_asked_sizes_and_no_leakage(digits):
    params, root = digits
    rows, hashes = {}, {}
    for split in SPLITS:
        with np.load(root / "processed" / f"{split}.npz") as arrays:
            rows[split] = set(arrays["indices"].tolist())
            hashes[split] = {
                hashlib.sha1(image.tobytes()).hexdigest() for image in arrays["images"]
            }
    total = sum(len(r) for r in rows.values())
    assert total == 1797
    assert len(rows["test"]) / total == pytest.approx(params.preprocess.test_fraction, abs=0.01)
    assert len(rows["val"]) / total == pytest.approx(params.preprocess.val_fraction, abs=0.01)
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not rows[first] & rows[second]
        assert not hashes[first] & hashes[second], f"an image is in both {first} and {second}"

import json

import numpy as np
import pytest

from tasks.core.config import PreprocessParams
from tasks.core.files import read_raw_dataset, read_split, write_raw_dataset
from tasks.core.images import prepare_images
from tasks.stages.preprocess import SplitError, channel_statistics, run_preprocess, stratified_split
from tests.helpers import synthetic_dataset


def params(**changes) -> PreprocessParams:
    base = dict(seed=42, val_fraction=0.2, test_fraction=0.2, image_size=None, channels=None)
    return PreprocessParams(**(base | changes))


def test_splits_are_stratified_disjoint_and_complete(raw_dir, tmp_path, places):
    result = run_preprocess(params(), raw_dir, tmp_path / "processed", places)
    raw = read_raw_dataset(raw_dir)
    seen = []
    for split in ("train", "val", "test"):
        dataset, _ = read_split(tmp_path / "processed", split)
        with np.load(tmp_path / "processed" / f"{split}.npz") as arrays:
            rows = arrays["indices"]
        np.testing.assert_array_equal(dataset.images, raw.images[rows])
        np.testing.assert_array_equal(dataset.labels, raw.labels[rows])
        # every class in every split, in its overall (here equal) proportion, up to rounding
        per_class = np.bincount(dataset.labels, minlength=3)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1
        assert per_class.sum() == result.split_sizes[split]
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(raw.labels)))


def test_the_served_feedback_rows_are_recorded_for_the_monitoring_reference(
    raw_dir, tmp_path, places
):
    """collect appends labelled feedback last and counts it in meta.json: preprocess records
    which raw rows those are, so evaluate can build the reference from the newest rows."""
    meta = json.loads((raw_dir / "meta.json").read_text())
    samples = meta["num_samples"]
    (raw_dir / "meta.json").write_text(json.dumps({**meta, "feedback_samples": 5}))
    run_preprocess(params(), raw_dir, tmp_path / "processed", places)
    info = json.loads((tmp_path / "processed" / "preprocess.json").read_text())
    assert info["feedback_rows"] == [samples - 5, samples]

    (raw_dir / "meta.json").write_text(json.dumps(meta))  # no feedback: no key, bytes as before
    run_preprocess(params(), raw_dir, tmp_path / "plain", places)
    assert "feedback_rows" not in json.loads((tmp_path / "plain" / "preprocess.json").read_text())


def test_split_is_seeded(raw_dir, tmp_path, places):
    run_preprocess(params(seed=1), raw_dir, tmp_path / "a", places)
    run_preprocess(params(seed=1), raw_dir, tmp_path / "b", places)
    run_preprocess(params(seed=2), raw_dir, tmp_path / "c", places)
    index = {name: np.load(tmp_path / name / "test.npz")["indices"] for name in "abc"}
    np.testing.assert_array_equal(index["a"], index["b"])
    assert not np.array_equal(index["a"], index["c"])


def test_normalisation_statistics_come_from_the_train_split_only(raw_dir, tmp_path, places):
    run_preprocess(params(), raw_dir, tmp_path / "processed", places)
    train, info = read_split(tmp_path / "processed", "train")
    pixels = train.images.astype(np.float64) / 255.0
    assert info["mean"] == pytest.approx([pixels.mean()])
    assert info["std"] == pytest.approx([pixels.std()])
    everything = read_raw_dataset(raw_dir).images.astype(np.float64) / 255.0
    assert info["mean"][0] != pytest.approx(everything.mean(), abs=1e-9)


def test_a_class_too_small_to_stratify_is_named(tmp_path, places):
    data = synthetic_dataset(per_class=10)
    keep = np.concatenate([np.flatnonzero(data.labels != 2), np.flatnonzero(data.labels == 2)[:2]])
    small = type(data)(data.images[keep], data.labels[keep], data.class_names)
    write_raw_dataset(small, tmp_path / "raw", source="test")
    with pytest.raises(
        SplitError, match=r"class 'class_2' has 2 distinct sample\(s\); each class needs"
    ):
        run_preprocess(params(), tmp_path / "raw", tmp_path / "processed", places)
    assert not (tmp_path / "processed").exists()


def test_a_split_too_small_for_the_classes_is_explained():
    labels = np.repeat(np.arange(10), 3)
    with pytest.raises(SplitError, match="cannot stratify 30 distinct samples in 10 classes"):
        stratified_split(labels, tuple(map(str, range(10))), 0.1, 0.1, seed=0)


def test_resize_and_channel_conversion(tmp_path):
    images = np.zeros((2, 8, 8, 1), np.uint8)
    images[:, :4] = 255
    out = prepare_images(images, image_size=16, channels=3)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [255, 255, 255] and out[0, -1, 0].tolist() == [0, 0, 0]
    grey = prepare_images(out, image_size=None, channels=1)
    assert grey.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(grey[..., 0], out[..., 0])
    assert prepare_images(images, None, None) is images


def test_preprocess_writes_the_model_input_shape(tmp_path, places):
    write_raw_dataset(synthetic_dataset(shape=(8, 8, 1)), tmp_path / "raw", source="test")
    result = run_preprocess(
        params(image_size=12, channels=3), tmp_path / "raw", tmp_path / "processed", places
    )
    info = json.loads((tmp_path / "processed" / "preprocess.json").read_text())
    assert result.image_shape == (12, 12, 3)
    assert info["image_shape"] == [12, 12, 3] and info["source_image_shape"] == [8, 8, 1]
    assert len(info["mean"]) == 3


def test_constant_channel_gets_unit_std():
    mean, std = channel_statistics(np.full((4, 2, 2, 1), 51, np.uint8))
    assert mean == pytest.approx((0.2,)) and std == (1.0,)

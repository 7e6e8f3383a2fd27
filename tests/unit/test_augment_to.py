"""collect.augment_to: sklearn digits grown to MNIST-like 28x28 images, and the split that keeps
copies of one digit together."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks.core.config import CollectParams, PreprocessParams
from tasks.core.files import ImageDataset, read_raw_dataset, write_raw_dataset
from tasks.stages.collect import run_collect
from tasks.stages.collecting import augment
from tasks.stages.collecting.checks import DataSourceError
from tasks.stages.collecting.digits import load_sklearn_digits
from tasks.stages.preprocess import linked_groups, run_preprocess, stratified_split
from tasks.stages.validate import run_validate
from tasks.validation.gate import DataValidationFailed
from tasks.validation.profiles import content_hashes
from tests.helpers import md5, synthetic_dataset

ORIGINALS = 1797
PREPROCESS = PreprocessParams(
    seed=42, val_fraction=0.15, test_fraction=0.15, image_size=None, channels=None
)


def augmented(augment_to: int, seed: int = 0, feedback: bool = False) -> CollectParams:
    return CollectParams(
        source="sklearn-digits",
        root="data/external",
        download=False,
        feedback=feedback,
        augment_to=augment_to,
        seed=seed,
    )


def split_rows(processed) -> dict[str, np.ndarray]:
    rows = {}
    for name in ("train", "val", "test"):
        with np.load(processed / f"{name}.npz") as arrays:
            rows[name] = arrays["indices"]
    return rows


def test_images_labels_groups_and_class_balance(tmp_path):
    result = run_collect(augmented(3000), tmp_path / "raw")
    dataset = read_raw_dataset(tmp_path / "raw")
    groups = np.load(tmp_path / "raw" / "groups.npy")
    meta = json.loads((tmp_path / "raw" / "meta.json").read_text())
    digits = load_sklearn_digits()
    assert result.num_samples == 3000 and result.image_shape == (28, 28, 1)
    assert dataset.images.shape == (3000, 28, 28, 1) and dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64 and groups.dtype == np.int64
    assert dataset.class_names == tuple(str(k) for k in range(10))
    # image i is original i % 1797: every class keeps its share of the originals
    np.testing.assert_array_equal(groups, np.arange(3000) % ORIGINALS)
    np.testing.assert_array_equal(dataset.labels, digits.labels[groups])
    counts = np.bincount(dataset.labels, minlength=10)
    assert counts.sum() == 3000 and counts.min() >= 0.9 * counts.max()
    assert meta["groups"] == {"file": "groups.npy", "count": ORIGINALS}
    assert meta["augment"]["originals"] == ORIGINALS and meta["augment"]["copies"] == 1203
    assert meta["augment"]["seed"] == 0 and meta["num_samples"] == 3000
    assert dataset.images.max() == 255 and dataset.images.min() == 0


def test_originals_come_first_upscaled_into_the_central_20x20_box(tmp_path):
    run_collect(augmented(ORIGINALS), tmp_path / "raw")
    images = read_raw_dataset(tmp_path / "raw").images[..., 0].astype(np.int64)
    small = load_sklearn_digits().images[..., 0].astype(np.float32)
    upscaled = F.interpolate(
        torch.from_numpy(small).unsqueeze(1), size=(20, 20), mode="bilinear", align_corners=False
    )[:, 0].round()
    box = images[:, 4:24, 4:24]
    # bilinear inside the box; at its edge the digit fades into the black frame (over one pixel
    # beyond the box) instead of repeating its edge, hence the comparison inside it only
    inner = np.abs(box[:, 1:-1, 1:-1] - upscaled.numpy()[:, 1:-1, 1:-1])
    assert inner.max() <= 1
    frame = images.copy()
    frame[:, 3:25, 3:25] = 0
    assert not frame.any()


def test_copies_are_transformed_copies_of_their_original(tmp_path):
    run_collect(augmented(2 * ORIGINALS), tmp_path / "raw")
    images = read_raw_dataset(tmp_path / "raw").images.reshape(2 * ORIGINALS, -1)
    originals, copies = images[:ORIGINALS].astype(float), images[ORIGINALS:].astype(float)
    assert (originals != copies).any(axis=1).all()  # no copy is its original unchanged

    def correlation(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        left = left - left.mean(axis=1, keepdims=True)
        right = right - right.mean(axis=1, keepdims=True)
        return (left * right).sum(axis=1) / np.sqrt((left**2).sum(1) * (right**2).sum(1))

    own = correlation(copies, originals)
    other = correlation(copies, np.roll(originals, 1, axis=0))
    assert own.mean() > 0.6 and (own > other).mean() > 0.9


def test_same_seed_same_bytes_other_seed_other_copies(tmp_path, monkeypatch):
    run_collect(augmented(2500, seed=7), tmp_path / "a")
    monkeypatch.setattr(augment, "AUGMENT_CHUNK", 333)  # chunking and threads change nothing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_collect(augmented(2500, seed=7), tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    run_collect(augmented(2500, seed=8), tmp_path / "c")
    for name in ("images.npy", "labels.npy", "groups.npy", "meta.json"):
        assert md5(tmp_path / "a" / name) == md5(tmp_path / "b" / name)
    seven = read_raw_dataset(tmp_path / "a").images
    eight = read_raw_dataset(tmp_path / "c").images
    np.testing.assert_array_equal(seven[:ORIGINALS], eight[:ORIGINALS])
    assert (seven[ORIGINALS:] != eight[ORIGINALS:]).any(axis=(1, 2, 3)).all()


def test_fewer_than_the_originals_is_refused_by_name(tmp_path):
    with pytest.raises(
        DataSourceError, match=r"collect\.augment_to is 1000 .* expected at least 1797"
    ):
        run_collect(augmented(1000), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_labelled_feedback_images_are_groups_of_their_own(tmp_path):
    external = tmp_path / "external"
    external.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        external / "feedback.npz",
        images=rng.integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8),
        labels=np.array([3, 1, 4]),
        class_names=np.array([str(k) for k in range(10)]),
    )
    result = run_collect(augmented(2000, feedback=True), tmp_path / "raw", external)
    groups = np.load(tmp_path / "raw" / "groups.npy")
    assert result.feedback_samples == 3 and len(groups) == 2003
    assert groups[-3:].tolist() == [ORIGINALS, ORIGINALS + 1, ORIGINALS + 2]
    assert read_raw_dataset(tmp_path / "raw").labels[-3:].tolist() == [3, 1, 4]


def test_copies_of_one_digit_stay_in_one_split(tmp_path, tiny_params, places):
    data = tmp_path / "data"
    run_collect(augmented(4000), data / "raw")
    run_validate(tiny_params.validate, data / "raw", data / "validated", places)
    assert md5(data / "validated" / "groups.npy") == md5(data / "raw" / "groups.npy")
    run_preprocess(PREPROCESS, data / "validated", data / "processed", places)
    groups = np.load(data / "raw" / "groups.npy")
    labels = read_raw_dataset(data / "raw").labels
    rows = split_rows(data / "processed")
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(4000))
    split_groups = {name: set(groups[r].tolist()) for name, r in rows.items()}
    assert not split_groups["train"] & split_groups["val"]
    assert not split_groups["train"] & split_groups["test"]
    assert not split_groups["val"] & split_groups["test"]
    # stratified over the originals: every class in every split, about 15% of them in test
    assert all(set(labels[r].tolist()) == set(range(10)) for r in rows.values())
    assert len(split_groups["test"]) == pytest.approx(0.15 * ORIGINALS, abs=2)
    info = json.loads((data / "processed" / "preprocess.json").read_text())
    assert info["split_groups"] == ORIGINALS


def test_identical_images_of_two_groups_pull_both_groups_into_one_split(tmp_path, places):
    base = synthetic_dataset(per_class=12, num_classes=3)
    # two copies per original (groups 0..35), and original 5's image again as original 20's
    # second copy: groups 5 and 20 must then land together
    images = np.concatenate([base.images, base.images])
    labels = np.concatenate([base.labels, base.labels])
    groups = np.concatenate([np.arange(36), np.arange(36)]).astype(np.int64)
    images[36 + 20], labels[36 + 20] = base.images[5], base.labels[5]
    labels[20] = base.labels[5]
    write_raw_dataset(
        ImageDataset(images, labels, base.class_names),
        tmp_path / "validated",
        source="test",
        groups=groups,
    )
    run_preprocess(PREPROCESS, tmp_path / "validated", tmp_path / "processed", places)
    hashes = content_hashes(images)
    split_of_row = {}
    for name, rows in split_rows(tmp_path / "processed").items():
        split_of_row.update(dict.fromkeys(rows.tolist(), name))
    for key in (groups, hashes):
        for value in np.unique(key):
            assert len({split_of_row[row] for row in np.flatnonzero(key == value)}) == 1
    assert split_of_row[5] == split_of_row[20]


def test_linked_groups_joins_identical_images_and_siblings():
    hashes = np.array([10, 11, 12, 10, 13, 14])
    siblings = np.array([0, 0, 1, 2, 3, 3])
    linked = linked_groups(hashes, siblings)
    # rows 0 and 1 are siblings, row 3 is row 0's twin; 4 and 5 are siblings; 2 is alone
    assert linked[0] == linked[1] == linked[3]
    assert linked[4] == linked[5]
    assert len({linked[0], linked[2], linked[4]}) == 3


def test_data_without_groups_splits_by_content_hash_as_before(raw_dir, tmp_path, places):
    run_preprocess(PREPROCESS, raw_dir, tmp_path / "processed", places)
    raw = read_raw_dataset(raw_dir)
    expected = stratified_split(
        raw.labels, raw.class_names, 0.15, 0.15, seed=42, groups=content_hashes(raw.images)
    )
    for name, rows in split_rows(tmp_path / "processed").items():
        np.testing.assert_array_equal(rows, expected[name])
    info = json.loads((tmp_path / "processed" / "preprocess.json").read_text())
    assert "split_groups" not in info and not (raw_dir / "groups.npy").exists()


def test_validate_refuses_groups_that_do_not_fit(tmp_path, tiny_params, places):
    raw = tmp_path / "raw"
    write_raw_dataset(synthetic_dataset(), raw, source="test", groups=np.arange(36, dtype=np.int64))
    np.save(raw / "groups.npy", np.arange(35))
    with pytest.raises(DataValidationFailed, match=r"groups\.npy: int64 \(35,\); expected"):
        run_validate(tiny_params.validate, raw, tmp_path / "validated", places)
    (raw / "groups.npy").unlink()
    with pytest.raises(DataValidationFailed, match=r"groups\.npy: not found, but .*meta\.json"):
        run_validate(tiny_params.validate, raw, tmp_path / "validated", places)
    assert not (tmp_path / "validated").exists()

"""The one .npz image reader (tasks/core/image_npz.py): collect's npz source and feedback file,
and the batches `mlcycle monitor --batch` scores, read under one set of rules."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.image_npz import ImageNpzError, read_image_npz, read_labelled_npz


def test_a_batch_without_labels_is_read_with_a_channel_axis(tmp_path):
    path = tmp_path / "batch.npz"
    np.savez(path, images=np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5))
    batch = read_image_npz(path)
    assert batch.images.shape == (3, 4, 5, 1) and batch.images.dtype == np.uint8
    assert batch.images[2, 3, 4, 0] == 59
    assert batch.labels is None and batch.class_names is None


def test_labels_and_class_names_come_back_as_stored(tmp_path):
    path = tmp_path / "batch.npz"
    np.savez(
        path,
        images=np.zeros((2, 2, 2, 3), np.int32),
        labels=np.array([7, -1]),
        class_names=np.array(["a", "b"]),
    )
    batch = read_image_npz(path)
    assert batch.images.dtype == np.uint8  # integers in 0..255 are cast
    assert batch.labels.tolist() == [7, -1]  # whether they fit a model is the caller's rule
    assert batch.class_names.tolist() == ["a", "b"]


def test_labelled_archives_encode_string_labels_by_sorted_value(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((3, 2, 2), np.uint8), labels=np.array(["dog", "cat", "dog"]))
    dataset = read_labelled_npz(path)
    assert dataset.class_names == ("cat", "dog") and dataset.labels.tolist() == [1, 0, 1]


def savez(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 2, 2), np.uint8)}, "missing array 'images' (expected 'images'; "),
        ({"images": np.zeros((2, 2, 2, 2), np.uint8)}, "'images' has shape (2, 2, 2, 2); expected"),
        ({"images": np.zeros((0, 2, 2), np.uint8)}, "'images' is empty"),
        (
            {"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros(3)},
            "'images' holds 2 samples but 'labels' has shape (3,)",
        ),
        ({"images": np.zeros((2, 2, 2), np.float32)}, "'images': pixels are float32; expected"),
        ({"images": np.full((2, 2, 2), 256)}, "'images': integer pixels range 256..256; expected"),
    ],
    ids=["no-images", "two-channels", "empty", "labels-length", "float-pixels", "above-255"],
)
def test_each_refusal_names_the_file_and_the_array(tmp_path, arrays, message):
    path = savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ImageNpzError) as refused:
        read_image_npz(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_a_labelled_archive_needs_its_labels(tmp_path):
    path = savez(tmp_path / "bad.npz", images=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageNpzError, match=r"missing array 'labels' \(expected 'images' and "):
        read_labelled_npz(path)


def test_files_that_are_no_archive_are_named(tmp_path):
    with pytest.raises(ImageNpzError, match=r"absent\.npz: file not found"):
        read_image_npz(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(ImageNpzError, match=r"notes\.npz: not an \.npz archive"):
        read_image_npz(text)

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.config import CollectParams
from tasks.core.files import read_raw_dataset, write_raw_dataset
from tasks.stages.collect import load_source, run_collect
from tasks.stages.collecting.checks import DataSourceError, regular_file
from tests.helpers import synthetic_dataset


def source(
    spec: str, root: Path | str = "data/external", download: bool = False, feedback: bool = False
):
    return CollectParams(
        source=spec, root=str(root), download=download, feedback=feedback, augment_to=None, seed=0
    )


def test_sklearn_digits_lands_in_the_canonical_format(tmp_path):
    result = run_collect(source("sklearn-digits"), tmp_path / "raw")
    dataset = read_raw_dataset(tmp_path / "raw")
    meta = json.loads((tmp_path / "raw" / "meta.json").read_text())
    assert result.num_samples == 1797
    assert dataset.images.shape == (1797, 8, 8, 1)
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int64
    assert dataset.images.max() == 255 and dataset.images.min() == 0
    assert meta["class_names"] == [str(k) for k in range(10)]
    assert meta["image_shape"] == [8, 8, 1]
    assert sum(meta["class_counts"].values()) == 1797


# --- npz ---------------------------------------------------------------------------------


def test_npz_with_string_labels_and_channelless_images(tmp_path):
    path = tmp_path / "my.npz"
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    np.savez(path, images=images, labels=np.array(["cat", "dog", "cat", "dog", "ant", "ant"]))
    dataset = load_source(source(f"npz:{path}"), tmp_path)
    assert dataset.images.shape == (6, 4, 4, 1)
    assert dataset.class_names == ("ant", "cat", "dog")
    assert dataset.labels.tolist() == [1, 2, 1, 2, 0, 0]


def test_npz_with_class_names_keeps_label_ids(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(
        path,
        images=np.zeros((4, 2, 2, 3), np.uint8),
        labels=np.array([0, 1, 1, 0]),
        class_names=np.array(["no", "yes", "maybe"]),
    )
    dataset = load_source(source(f"npz:{path}"), tmp_path)
    assert dataset.class_names == ("no", "yes", "maybe")
    assert dataset.labels.tolist() == [0, 1, 1, 0]


def test_npz_integer_pixels_in_range_are_accepted(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.full((2, 2, 2), 200, np.int32), labels=np.array([0, 1]))
    assert load_source(source(f"npz:{path}"), tmp_path).images.dtype == np.uint8


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataSourceError, match=r"npz:.*absent\.npz: file not found"):
        load_source(source(f"npz:{tmp_path / 'absent.npz'}"), tmp_path)


def test_npz_without_labels_names_the_array(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.zeros((3, 2, 2), np.uint8), targets=np.zeros(3))
    with pytest.raises(DataSourceError, match=r"missing array 'labels'.*found images, targets"):
        load_source(source(f"npz:{path}"), tmp_path)


def test_npz_with_mismatched_lengths(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.zeros((5, 2, 2), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(DataSourceError, match=r"'images' holds 5 samples but 'labels' has shape"):
        load_source(source(f"npz:{path}"), tmp_path)


def test_npz_float_pixels_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.random.rand(3, 2, 2), labels=np.arange(3))
    with pytest.raises(DataSourceError, match=r"pixels are float64; expected uint8"):
        load_source(source(f"npz:{path}"), tmp_path)


def test_npz_out_of_range_integers(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.full((2, 2, 2), 300, np.int32), labels=np.array([0, 1]))
    with pytest.raises(DataSourceError, match=r"range 300\.\.300; expected 0\.\.255"):
        load_source(source(f"npz:{path}"), tmp_path)


def test_single_class_is_refused(tmp_path):
    path = tmp_path / "my.npz"
    np.savez(path, images=np.zeros((3, 2, 2), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(DataSourceError, match="found 1 class"):
        load_source(source(f"npz:{path}"), tmp_path)


# --- image folder ------------------------------------------------------------------------


def write_png(path: Path, size=(6, 5), mode="L", value=100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_folder_of_class_subfolders(tmp_path):
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "imgs" / "cat" / name)
    write_png(tmp_path / "imgs" / "dog" / "c.png", value=7)
    (tmp_path / "imgs" / "dog" / ".DS_Store").write_text("ignored: hidden")
    dataset = load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.images.shape == (3, 5, 6, 1)
    assert dataset.labels.tolist() == [0, 0, 1]
    assert dataset.images[2].max() == 7


def test_folder_missing(tmp_path):
    with pytest.raises(DataSourceError, match=r"folder:.*nowhere: folder not found"):
        load_source(source(f"folder:{tmp_path / 'nowhere'}"), tmp_path)


def test_folder_with_mixed_shapes_names_both_files(tmp_path):
    write_png(tmp_path / "imgs" / "cat" / "small.png", size=(4, 4))
    write_png(tmp_path / "imgs" / "dog" / "big.png", size=(8, 8))
    with pytest.raises(
        DataSourceError, match=r"big\.png: image is 8x8x1 but .*small\.png is 4x4x1"
    ):
        load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)


def test_folder_with_mixed_channels(tmp_path):
    write_png(tmp_path / "imgs" / "cat" / "grey.png", mode="L")
    write_png(tmp_path / "imgs" / "dog" / "colour.png", mode="RGB")
    with pytest.raises(DataSourceError, match=r"colour\.png: image is 5x6x3 but .*grey\.png"):
        load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)


def test_folder_with_a_non_image_file(tmp_path):
    write_png(tmp_path / "imgs" / "cat" / "a.png")
    (tmp_path / "imgs" / "dog").mkdir()
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match=r"notes\.txt: not an image file"):
        load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)


def test_folder_with_an_undecodable_image(tmp_path):
    write_png(tmp_path / "imgs" / "cat" / "a.png")
    (tmp_path / "imgs" / "dog").mkdir()
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataSourceError, match=r"broken\.png: cannot decode image"):
        load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)


def test_folder_with_an_empty_class(tmp_path):
    write_png(tmp_path / "imgs" / "cat" / "a.png")
    (tmp_path / "imgs" / "dog").mkdir()
    with pytest.raises(DataSourceError, match=r"class folder .*dog holds no images"):
        load_source(source(f"folder:{tmp_path / 'imgs'}"), tmp_path)


# --- torchvision -------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format MNIST ships in: magic (dtype 0x08 = uint8, ndim), sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_files_on_disk(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    dataset = load_source(source("torchvision:MNIST", root=tmp_path), tmp_path)
    assert dataset.images.shape == (10, 28, 28, 1)
    assert dataset.labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert dataset.class_names[0] == "0 - zero"


def test_torchvision_missing_files_are_named(tmp_path):
    with pytest.raises(DataSourceError) as caught:
        load_source(source("torchvision:FashionMNIST", root=tmp_path), tmp_path)
    message = str(caught.value)
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in message
    assert "t10k-labels-idx1-ubyte" in message
    assert "collect.download=true" in message


def test_torchvision_cifar_missing_files_are_named(tmp_path):
    with pytest.raises(DataSourceError, match=r"cifar-10-batches-py/data_batch_1"):
        load_source(source("torchvision:CIFAR10", root=tmp_path), tmp_path)


def test_torchvision_unknown_dataset(tmp_path):
    with pytest.raises(DataSourceError, match="torchvision has no dataset 'NotADataset'"):
        load_source(source("torchvision:NotADataset", root=tmp_path), tmp_path)


# --- atomicity -----------------------------------------------------------------------------


def test_failed_collect_leaves_the_previous_data_untouched(tmp_path):
    raw = tmp_path / "raw"
    write_raw_dataset(synthetic_dataset(), raw, source="synthetic")
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    with pytest.raises(DataSourceError):
        run_collect(source(f"npz:{tmp_path / 'absent.npz'}"), raw, tmp_path)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temp folders left


# --- sources DVC can watch (data/external) ------------------------------------------------


def two_class_folder(root: Path) -> Path:
    for label in ("cat", "dog"):
        write_png(root / label / "a.png", value=10 if label == "cat" else 200)
    return root


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda outside, external: f"folder:{outside}", id="absolute-path-outside"),
        pytest.param(lambda outside, external: f"folder:{external}/../imgs", id="dot-dot-out"),
    ],
)
def test_a_folder_outside_external_is_refused_saying_how_to_bring_it_in(tmp_path, where):
    external = tmp_path / "external"
    external.mkdir()
    outside = two_class_folder(tmp_path / "imgs")
    with pytest.raises(DataSourceError, match=r"is outside .*external/\. DVC watches only") as e:
        load_source(source(where(outside, external)), external)
    assert "copy it under" in str(e.value) and "dvc import" in str(e.value)


def test_a_symlink_leading_out_of_external_is_refused(tmp_path):
    external = tmp_path / "external"
    external.mkdir()
    (external / "imgs").symlink_to(two_class_folder(tmp_path / "imgs"))
    with pytest.raises(DataSourceError, match="through a symlink"):
        load_source(source(f"folder:{external / 'imgs'}"), external)
    # one file linked from outside is refused too
    inside = two_class_folder(external / "own")
    (inside / "cat" / "b.png").symlink_to(tmp_path / "imgs" / "cat" / "a.png")
    with pytest.raises(DataSourceError, match=r"b\.png is outside"):
        load_source(source(f"folder:{inside}"), external)


def test_a_device_file_named_like_an_image_is_refused_not_read(tmp_path):
    """A symlink to /dev/zero named x.png used to hang the run, reading forever."""
    folder = two_class_folder(tmp_path / "imgs")
    (folder / "cat" / "x.png").symlink_to("/dev/zero")
    with pytest.raises(DataSourceError, match="outside"):
        load_source(source(f"folder:{folder}"), tmp_path)
    with pytest.raises(DataSourceError, match="not a regular file"):
        regular_file(Path("/dev/zero"), Path("/dev"))


def test_a_file_that_is_not_an_npz_archive_is_named_as_such(tmp_path):
    """Not "pickled (object) data", as numpy would say of any file that is not a zip."""
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"\x80\x04 not an archive at all" * 10)
    with pytest.raises(DataSourceError, match=r"garbage\.npz: not an \.npz archive"):
        load_source(source(f"npz:{path}"), tmp_path)


def test_the_torchvision_root_must_be_inside_external(tmp_path):
    with pytest.raises(DataSourceError, match=r"collect\.root .* is outside"):
        load_source(source("torchvision:MNIST", root=tmp_path / "elsewhere"), tmp_path / "ext")


# --- labelled feedback from serving (collect.feedback) ---------------------------------------


def npz_source(external: Path, shape=(4, 4, 1)) -> Path:
    """Six images of classes cat, dog, emu in data/external."""
    path = external / "source.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=np.zeros((6, *shape), np.uint8),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        class_names=np.array(["cat", "dog", "emu"]),
    )
    return path


def write_feedback(external: Path, class_names, labels, shape=(4, 4, 1)) -> Path:
    """data/external/feedback.npz as tasks.core.prediction_log.export exports it."""
    path = external / "feedback.npz"
    np.savez(
        path,
        images=np.full((len(labels), *shape), 200, np.uint8),
        labels=np.asarray(labels, np.int64),
        class_names=np.asarray(class_names),
        prediction_ids=np.asarray([f"{k:032x}" for k in range(len(labels))]),
    )
    return path


def test_feedback_rows_are_added_by_class_name_and_counted_in_meta(tmp_path, caplog):
    external = tmp_path / "external"
    spec = f"npz:{npz_source(external)}"
    # the served model listed its classes in another order, and one class was never labelled
    write_feedback(external, ["emu", "cat", "dog"], [0, 1, 0])
    with caplog.at_level("INFO", logger="mlcycle.collect"):
        result = run_collect(source(spec, feedback=True), tmp_path / "raw", external)
    raw = read_raw_dataset(tmp_path / "raw")
    assert (result.num_samples, result.feedback_samples) == (9, 3)
    assert raw.class_names == ("cat", "dog", "emu")
    assert [raw.class_names[k] for k in raw.labels[6:]] == ["emu", "cat", "emu"]
    assert raw.images[6:].min() == 200 and raw.images[:6].max() == 0
    meta = json.loads((tmp_path / "raw" / "meta.json").read_text())
    assert meta["feedback_samples"] == 3 and meta["num_samples"] == 9
    assert meta["class_counts"] == {"cat": 3, "dog": 2, "emu": 4}
    assert "3 labelled feedback images added from" in caplog.text


def test_feedback_on_without_a_file_yet_collects_the_source_alone(tmp_path, caplog):
    external = tmp_path / "external"
    spec = f"npz:{npz_source(external)}"
    with caplog.at_level("INFO", logger="mlcycle.collect"):
        result = run_collect(source(spec, feedback=True), tmp_path / "raw", external)
    assert (result.num_samples, result.feedback_samples) == (6, 0)
    assert "no labelled feedback yet" in caplog.text
    assert json.loads((tmp_path / "raw" / "meta.json").read_text())["feedback_samples"] == 0


def test_feedback_off_leaves_the_file_out_and_meta_as_before(tmp_path):
    external = tmp_path / "external"
    spec = f"npz:{npz_source(external)}"
    write_feedback(external, ["cat"], [0])
    result = run_collect(source(spec), tmp_path / "raw", external)
    assert (result.num_samples, result.feedback_samples) == (6, 0)
    assert "feedback_samples" not in json.loads((tmp_path / "raw" / "meta.json").read_text())


def test_feedback_of_a_class_the_source_lacks_names_the_file_and_the_class(tmp_path):
    external = tmp_path / "external"
    spec = f"npz:{npz_source(external)}"
    write_feedback(external, ["cat", "fox", "gnu"], [0, 1])  # gnu is listed but unused: fine
    with pytest.raises(
        DataSourceError,
        match=r"feedback\.npz: class 'fox' is not a class of npz:.*\(cat, dog, emu\)",
    ) as caught:
        run_collect(source(spec, feedback=True), tmp_path / "raw", external)
    assert "collect.feedback=false" in str(caught.value)
    assert not (tmp_path / "raw").exists()


def test_feedback_of_another_image_shape_names_the_file_the_shapes_and_what_to_do(tmp_path):
    external = tmp_path / "external"
    spec = f"npz:{npz_source(external)}"
    write_feedback(external, ["cat"], [0], shape=(8, 8, 1))
    with pytest.raises(
        DataSourceError, match=r"feedback\.npz: feedback images are 8x8x1 but npz:.*'s are 4x4x1"
    ) as caught:
        run_collect(source(spec, feedback=True), tmp_path / "raw", external)
    message = str(caught.value)
    assert "Export the feedback again" in message and "collect.feedback=false" in message

"""collect: bring a dataset from its source into the canonical ``data/raw`` format.

Sources: ``sklearn-digits`` (embedded, the default), ``torchvision:<Name>`` (MNIST,
FashionMNIST, KMNIST, CIFAR10 ... from ``collect.root``), ``folder:<path>`` (one sub-folder of
images per class) and ``npz:<path>`` (arrays ``images`` and ``labels``). With
``collect.feedback``, the served images people labelled (``data/external/feedback.npz``, which
``tasks.serving.feedback`` exports) are added to the source's.

``collect.augment_to`` grows sklearn-digits to MNIST scale without a download: the 1,797 digits
upscaled to 28x28, then random affine copies of them (seeded by ``collect.seed``), with
``groups.npy`` naming each image's original so that preprocess keeps copies of one digit in one
split.
"""

from __future__ import annotations

import inspect
import logging
import os
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from tasks.core.config import CollectParams, load_params
from tasks.core.console import stage_main
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset, read_json, write_json, write_raw_dataset
from tasks.core.images import ImageFormatError, pixels_from_image
from tasks.core.paths import EXTERNAL_DIR, FEEDBACK_FILE, RAW_DIR

log = logging.getLogger("mlcycle.collect")


# augment_to: MNIST's layout, a 28x28 frame with the digit in its central 20x20 box (its
# bilinear edge fades out one pixel beyond) ...
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
PROGRESS_FROM = 100_000  # augment_to sizes that log their progress (every ~10%)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataSourceError(MlcycleError):
    """A source is missing, unreadable or not in the shape the canonical format needs."""


@dataclass(frozen=True)
class CollectResult:
    raw_dir: Path
    num_samples: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    feedback_samples: int = 0  # of num_samples, the labelled served images added


def run_collect(
    params: CollectParams, raw_dir: Path = RAW_DIR, external_dir: Path = EXTERNAL_DIR
) -> CollectResult:
    """Load ``params.source`` and write it to ``raw_dir`` (images, labels, meta.json).

    Sources on disk must lie inside ``external_dir`` (``data/external``), which dvc.yaml
    declares as the stage's dependency: data read from anywhere else could change without DVC
    noticing, and later runs would train on stale data."""
    dataset = load_source(params, external_dir)
    groups, facts = None, {}
    if params.augment_to is not None:
        originals = len(dataset.labels)
        dataset, groups = augment_digits(dataset, params.augment_to, params.seed)
        facts = {"augment": augment_facts(originals, params.augment_to, params.seed)}
    added = 0
    if params.feedback:
        dataset, added = add_feedback(
            dataset, external_dir / FEEDBACK_FILE.name, params.source, external_dir
        )
        if groups is not None:  # each labelled image is a group of its own
            groups = np.concatenate([groups, groups.max() + 1 + np.arange(added, dtype=np.int64)])
    write_raw_dataset(dataset, raw_dir, source=params.source, groups=groups, facts=facts)
    if params.feedback:  # only then: without it, data/raw stays byte for byte as it was
        meta = read_json(raw_dir / "meta.json")
        write_json(raw_dir / "meta.json", {**meta, "feedback_samples": added})
    height, width, channels = dataset.image_shape
    log.info(
        "collect: %d images of %dx%dx%d in %d classes from %s -> %s",
        len(dataset.labels),
        height,
        width,
        channels,
        len(dataset.class_names),
        params.source,
        raw_dir,
    )
    return CollectResult(
        raw_dir, len(dataset.labels), dataset.image_shape, dataset.class_names, added
    )


def add_feedback(
    dataset: ImageDataset, path: Path, source: str, external_dir: Path = EXTERNAL_DIR
) -> tuple[ImageDataset, int]:
    """``dataset`` with the labelled served images of ``path`` appended, classes matched by
    name, and how many were added. No file yet: the dataset as it is (nobody labelled any)."""
    if not path.is_file():
        log.info("collect: no labelled feedback yet (%s not found); %s alone", path, source)
        return dataset, 0
    feedback = load_npz(path, external_dir)
    if feedback.image_shape != dataset.image_shape:
        raise DataSourceError(
            f"{path}: feedback images are {_shape_text(feedback.image_shape)} but {source}'s "
            f"are {_shape_text(dataset.image_shape)}; they were labelled on a model serving "
            "other data. Export the feedback again once the served model takes this source's "
            "images, or delete the file (and its .dvc file), or set collect.feedback=false"
        )
    position = {name: index for index, name in enumerate(dataset.class_names)}
    used = [feedback.class_names[index] for index in np.unique(feedback.labels)]
    unknown = [name for name in used if name not in position]
    if unknown:
        raise DataSourceError(
            f"{path}: class {unknown[0]!r} is not a class of {source} "
            f"({', '.join(dataset.class_names)}); the feedback was labelled on a model with "
            "other classes. Relabel or delete those predictions, delete the file (and its .dvc "
            "file), or set collect.feedback=false"
        )
    mapping = np.asarray([position.get(name, -1) for name in feedback.class_names], np.int64)
    log.info("collect: %d labelled feedback images added from %s", len(feedback.labels), path)
    combined = ImageDataset(
        np.concatenate([dataset.images, feedback.images]),
        np.concatenate([dataset.labels, mapping[feedback.labels]]),
        dataset.class_names,
    )
    return combined, len(feedback.labels)


def load_source(params: CollectParams, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    check_source_location(params, external_dir)
    kind, _, argument = params.source.partition(":")
    if kind == "sklearn-digits":
        dataset = load_sklearn_digits()
    elif kind == "torchvision":
        dataset = load_torchvision(argument, Path(params.root), params.download)
    elif kind == "folder":
        dataset = load_image_folder(Path(argument), external_dir)
    elif kind == "npz":
        dataset = load_npz(Path(argument), external_dir)
    else:  # params validation already rejects these; kept for callers that bypass it
        raise DataSourceError(f"collect.source: unknown source {params.source!r}")
    if len(dataset.class_names) < 2:
        raise DataSourceError(
            f"{params.source}: found {len(dataset.class_names)} class; "
            "a classifier needs at least 2"
        )
    return dataset


def check_source_location(params: CollectParams, external_dir: Path = EXTERNAL_DIR) -> None:
    """DataSourceError unless the source's files (and torchvision's root) are inside
    ``external_dir``: what ``mlcycle run`` checks before it writes params.yaml."""
    kind, _, argument = params.source.partition(":")
    if kind in ("folder", "npz"):
        inside_external(Path(argument), external_dir, f"collect.source {kind}:")
    elif kind == "torchvision":
        inside_external(Path(params.root), external_dir, "collect.root")


def inside_external(path: Path, external_dir: Path, what: str) -> None:
    """DataSourceError unless ``path``, symlinks followed, lies inside ``external_dir``."""
    resolved, root = path.resolve(), external_dir.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        written = Path(os.path.normpath(path.absolute()))
        via = f" (through a symlink, to {resolved})" if written != resolved else ""
        raise DataSourceError(
            f"{what} {path} is outside {external_dir}/{via}. DVC watches only {external_dir}/ "
            "for changes, so later runs would train on stale data. Bring the data in: copy it "
            f"under {external_dir}/ (or `dvc import` / `dvc add` it there) and point "
            "collect.source at that copy"
        )


def regular_file(path: Path, external_dir: Path) -> None:
    """A source file must be a plain file inside ``external_dir``: a device (a symlink to
    /dev/zero), a pipe or a socket would hang or feed garbage."""
    inside_external(path, external_dir, "source file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise DataSourceError(
            f"{path}: not a regular file (a device, pipe or socket); expected image files only"
        )


def load_sklearn_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, rescaled from 0..16 to the canonical 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return ImageDataset(
        images, digits.target.astype(np.int64), tuple(str(name) for name in digits.target_names)
    )


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


# rotation (degrees), scale, shear, shift x, shift y (pixels): the columns of a transform row
IDENTITY_TRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0)


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
    # pixel centres, from the frame's centre: -13.5 .. 13.5
    centres = np.arange(AUGMENTED_SIDE, dtype=np.float32) - (AUGMENTED_SIDE - 1) / 2
    grid_buffer = torch.empty((AUGMENT_CHUNK, AUGMENTED_SIDE, AUGMENTED_SIDE, 2))
    for start in range(0, count, AUGMENT_CHUNK):
        stop = min(start + AUGMENT_CHUNK, count)
        a, b, c, d, e, f = (column[:, None] for column in coefficients[start:stop].T)
        grid = grid_buffer[: stop - start]  # grid[n, row y, column x] = (source x, source y)
        # The per-row and per-column terms are small: numpy makes them without waking torch's
        # thread pool, whose wake-ups are what a busy machine makes slow (3x at 1M images).
        grid[..., 0] = tensor((b * centres)[:, :, None]) + tensor((a * centres + c)[:, None])
        grid[..., 1] = tensor((e * centres)[:, :, None]) + tensor((d * centres + f)[:, None])
        samples = functional.grid_sample(
            sources[source_of[start:stop]],
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        written[start:stop] = samples[:, 0].round_().clamp_(0, 255)
        if count >= PROGRESS_FROM and stop * 10 // count > start * 10 // count:
            log.info("collect: augment_to %d%% (%d of %d images)", stop * 100 // count, stop, count)
    return out


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


def load_torchvision(name: str, root: Path, download: bool) -> ImageDataset:
    """Train and test parts of a torchvision dataset, concatenated; we split it ourselves."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, name, None)
    if not (
        inspect.isclass(dataset_class)
        and issubclass(dataset_class, torchvision.datasets.VisionDataset)
    ):
        raise DataSourceError(
            f"torchvision:{name}: torchvision has no dataset {name!r} "
            "(expected a class such as MNIST, FashionMNIST, KMNIST or CIFAR10)"
        )
    parameters = inspect.signature(dataset_class).parameters
    if "train" in parameters:
        parts = [{"train": True}, {"train": False}]
    elif "split" in parameters:
        parts = [{"split": "train"}, {"split": "test"}]
    else:
        raise DataSourceError(
            f"torchvision:{name}: unsupported, it takes neither train= nor split= arguments"
        )
    images, labels, class_names = [], [], None
    for part in parts:
        try:
            loaded = dataset_class(root=str(root), download=download, **part)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError ...
            wanted = ", ".join(
                str(path) for path in expected_torchvision_files(dataset_class, root)
            )
            hint = (
                "the download failed (is there network access?)"
                if download
                else "set collect.download=true to fetch them, or copy them there"
            )
            raise DataSourceError(
                f"torchvision:{name}: dataset files not found or unreadable under {root} "
                f"(looked for {wanted}); {hint} [{type(error).__name__}: {error}]"
            ) from None
        part_images, part_labels = _torchvision_arrays(loaded)
        images.append(part_images)
        labels.append(part_labels)
        class_names = class_names or _torchvision_classes(loaded)
    all_labels = np.concatenate(labels)
    if class_names is None or len(class_names) <= int(all_labels.max()):
        class_names = tuple(str(label) for label in range(int(all_labels.max()) + 1))
    return ImageDataset(np.concatenate(images), all_labels, tuple(class_names))


def expected_torchvision_files(dataset_class: type, root: Path) -> list[Path]:
    """Where a torchvision dataset looks for its files, for error messages."""
    resources = getattr(dataset_class, "resources", None)
    if resources:  # MNIST, FashionMNIST, KMNIST, QMNIST ...: <root>/<Class>/raw/<file>
        raw_folder = root / dataset_class.__name__ / "raw"
        return [raw_folder / Path(entry[0]).name.removesuffix(".gz") for entry in resources]
    base_folder = getattr(dataset_class, "base_folder", None)
    if base_folder:  # CIFAR10, CIFAR100: <root>/<base_folder>/<batch files>
        listed = [
            *getattr(dataset_class, "train_list", []),
            *getattr(dataset_class, "test_list", []),
        ]
        return [root / base_folder / entry[0] for entry in listed] or [root / base_folder]
    return [root / dataset_class.__name__]


def _torchvision_arrays(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if data is not None and targets is not None:
        images = np.asarray(data)
        labels = np.asarray(targets, dtype=np.int64)
    else:  # datasets without in-memory arrays: decode sample by sample
        samples = [dataset[index] for index in range(len(dataset))]  # type: ignore[arg-type]
        images = np.stack([np.asarray(image) for image, _ in samples])
        labels = np.asarray([label for _, label in samples], dtype=np.int64)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C), as SVHN stores
    return _as_uint8(images, "torchvision data"), labels


def _torchvision_classes(dataset: object) -> tuple[str, ...] | None:
    classes = getattr(dataset, "classes", None)
    return tuple(str(name) for name in classes) if classes else None


def load_image_folder(root: Path, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    """``root/<class name>/<image files>``; hidden files (``.DS_Store``) are ignored."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataSourceError(f"folder:{root}: folder not found")
    entries = sorted(path for path in root.iterdir() if not path.name.startswith("."))
    stray = [path for path in entries if not path.is_dir()]
    if stray:
        raise DataSourceError(
            f"folder:{root}: {stray[0]} is a file; expected only one sub-folder per class"
        )
    if not entries:
        raise DataSourceError(f"folder:{root}: no class sub-folders found")
    images, labels = [], []
    first: tuple[Path, tuple[int, ...]] | None = None
    for label, class_dir in enumerate(entries):
        files = sorted(path for path in class_dir.iterdir() if not path.name.startswith("."))
        if not files:
            raise DataSourceError(f"folder:{root}: class folder {class_dir} holds no images")
        for path in files:
            if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataSourceError(
                    f"{path}: not an image file (expected {' '.join(IMAGE_SUFFIXES)})"
                )
            regular_file(path, external_dir)
            try:
                with Image.open(path) as image:
                    pixels = pixels_from_image(image, path)
            except (UnidentifiedImageError, OSError) as error:
                raise DataSourceError(f"{path}: cannot decode image ({error})") from None
            except ImageFormatError as error:
                raise DataSourceError(str(error)) from None
            if first is None:
                first = (path, pixels.shape)
            elif pixels.shape != first[1]:
                raise DataSourceError(
                    f"{path}: image is {_shape_text(pixels.shape)} but {first[0]} is "
                    f"{_shape_text(first[1])}; all images must share one shape"
                )
            images.append(pixels)
            labels.append(label)
    return ImageDataset(
        np.stack(images), np.asarray(labels, dtype=np.int64), tuple(d.name for d in entries)
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def load_npz(path: Path, external_dir: Path = EXTERNAL_DIR) -> ImageDataset:
    """Arrays ``images`` (N, H, W) or (N, H, W, C) and ``labels`` (N,); optional ``class_names``."""
    if not path.is_file():
        raise DataSourceError(f"npz:{path}: file not found")
    regular_file(path, external_dir)
    if not zipfile.is_zipfile(path):
        raise DataSourceError(
            f"{path}: not an .npz archive (a zip of .npy arrays, as numpy.savez writes)"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = sorted(arrays.files)
            missing = [key for key in ("images", "labels") if key not in found]
            if missing:
                raise DataSourceError(
                    f"{path}: missing array {' and '.join(repr(k) for k in missing)} "
                    f"(expected 'images' and 'labels'; found {', '.join(found) or 'none'})"
                )
            images, labels = arrays["images"], arrays["labels"]
            names = arrays["class_names"] if "class_names" in found else None
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataSourceError(f"{path}: not a readable .npz file ({error})") from None
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataSourceError(
            f"{path}: 'images' has shape {images.shape}; expected (N, H, W) or (N, H, W, C) "
            "with C 1 or 3"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataSourceError(
            f"{path}: 'images' holds {len(images)} samples but 'labels' has shape {labels.shape}; "
            "expected one label per image"
        )
    if len(images) == 0:
        raise DataSourceError(f"{path}: 'images' is empty")
    label_ids, class_names = _encode_labels(labels, names, path)
    return ImageDataset(_as_uint8(images, f"{path}: 'images'"), label_ids, class_names)


def _encode_labels(
    labels: np.ndarray, names: np.ndarray | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    if names is not None:
        if labels.dtype.kind not in "iu":
            raise DataSourceError(
                f"{path}: 'labels' must be integers indexing 'class_names', got {labels.dtype}"
            )
        bad = labels[(labels < 0) | (labels >= len(names))]
        if bad.size:
            raise DataSourceError(
                f"{path}: label {bad[0]} is outside 'class_names' (0..{len(names) - 1})"
            )
        return labels.astype(np.int64), tuple(str(name) for name in names)
    if labels.dtype.kind not in "iuUSb":
        raise DataSourceError(
            f"{path}: 'labels' has dtype {labels.dtype}; expected integers or strings"
        )
    classes, label_ids = np.unique(labels, return_inverse=True)
    return label_ids.astype(np.int64), tuple(str(value) for value in classes)


def _as_uint8(images: np.ndarray, what: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise DataSourceError(f"{what}: integer pixels range {low}..{high}; expected 0..255")
        return images.astype(np.uint8)
    raise DataSourceError(
        f"{what}: pixels are {images.dtype}; expected uint8 (or integers in 0..255). "
        "Scale float images to 0..255 and cast them to uint8 first"
    )


# For flows of your own: the training pipeline runs the stage through `dvc repro`.
collect_task = task(name="collect")(run_collect)


def main() -> None:
    params = load_params()
    run_collect(params.collect)


if __name__ == "__main__":
    stage_main(main)

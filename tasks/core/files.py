"""Atomic writes and the on-disk formats the stages hand to each other.

Every output is written beside its final place and renamed over it, so a crash or an error
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from tasks.core.errors import WRITE_ERRNOS, MlcycleError, exception_chain, write_failure

SPLITS = ("train", "val", "test")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions, so a
# server or a colleague running as another user can read them.
FILE_MODE = 0o666 & ~_umask()


DIR_MODE = 0o777 & ~_umask()


class OutputError(MlcycleError):
    """An output cannot be written where it belongs."""


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """OSError from creating or renaming ``path`` (not from the code that fills it) as one line
    naming the output, why, and what to do."""
    try:
        yield
    except OSError as error:
        raise OutputError(write_failure(path, error)) from None


@contextmanager
def filling(path: Path) -> Iterator[None]:
    """A full disk (or quota, file-size limit, read-only file system) while the block fills
    ``path``'s temporary file, as the same one line: the writer may mask the OSError (torch's
    zip writer raises ``RuntimeError: ... unexpected pos`` over it), so the whole chain is
    searched; other errors of the block are its own and pass through."""
    try:
        yield
    except Exception as error:
        full = next(
            (
                link
                for link in exception_chain(error)
                if isinstance(link, OSError) and link.errno in WRITE_ERRNOS
            ),
            None,
        )
        if full is None:
            raise
        raise OutputError(write_failure(path, full)) from error


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    with unwritable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        with filling(path):
            yield tmp
        with unwritable(path):
            tmp.chmod(FILE_MODE)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in for ``path`` on success.

    The old folder is moved aside first and put back if the swap fails, so ``path`` ends as
    either the old contents or the new, never a mix.
    """
    with unwritable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with filling(path):
            yield tmp
        tmp.chmod(DIR_MODE)
        for child in tmp.iterdir():
            if child.is_file():
                child.chmod(FILE_MODE)
        if not path.exists():
            os.replace(tmp, path)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(aside / path.name, path)
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def try_lock(handle: IO[str]) -> bool:
    """Take an exclusive OS lock (``flock``) on an open file without waiting; False when another
    process holds it. The kernel drops it when its holder dies, however it dies."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(handle: IO[str]) -> None:
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on ``path`` (created if missing) for the block,
    waiting for another process that holds it; the kernel drops it when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            unlock(handle)


MD5_BLOCK_BYTES = 1 << 20  # read a file to hash in 1 MiB blocks: memory stays flat


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MD5_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise MlcycleError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MlcycleError(f"{path}: not valid JSON ({error})") from None


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, H, W, C) uint8 with int64 labels indexing ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels have shape {self.labels.shape}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.images.shape[1:]
        return int(height), int(width), int(channels)

    def subset(self, rows: np.ndarray) -> ImageDataset:
        """The images and labels of ``rows``, in that order, with the same classes."""
        return ImageDataset(self.images[rows], self.labels[rows], self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(count) for name, count in zip(self.class_names, counts, strict=True)}


# Optional beside images.npy: int64 (N,), rows with one value derive from one original (copies
# of one digit, say); preprocess keeps each group in one split.
GROUPS_FILE = "groups.npy"


def write_raw_dataset(
    dataset: ImageDataset,
    out_dir: Path,
    source: str,
    groups: np.ndarray | None = None,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``images.npy``, ``labels.npy`` and ``meta.json`` as one atomic folder, with
    ``groups.npy`` when ``groups`` is given; ``facts`` are added to meta.json."""
    meta = {
        "source": source,
        "num_samples": len(dataset.labels),
        "image_shape": list(dataset.image_shape),
        "dtype": str(dataset.images.dtype),
        "class_names": list(dataset.class_names),
        "class_counts": dataset.class_counts(),
    }
    if groups is not None:
        if groups.shape != dataset.labels.shape or groups.dtype != np.int64:
            raise ValueError(
                f"groups must be int64 ({len(dataset.labels)},), got {groups.dtype} {groups.shape}"
            )
        meta["groups"] = {"file": GROUPS_FILE, "count": len(np.unique(groups))}
    meta.update(facts or {})
    with atomic_directory(out_dir) as tmp:
        np.save(tmp / "images.npy", dataset.images)
        np.save(tmp / "labels.npy", dataset.labels)
        if groups is not None:
            np.save(tmp / GROUPS_FILE, groups)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_raw_dataset(raw_dir: Path) -> ImageDataset:
    """Read ``data/raw`` (or a copy of it, such as ``data/validated``) into memory."""
    for name in ("images.npy", "labels.npy", "meta.json"):
        if not (raw_dir / name).is_file():
            raise MlcycleError(f"{raw_dir / name}: not found; run the collect stage first")
    meta = read_json(raw_dir / "meta.json")
    images = np.load(raw_dir / "images.npy")
    labels = np.load(raw_dir / "labels.npy")
    return ImageDataset(images, labels, tuple(meta["class_names"]))


def read_raw_groups(raw_dir: Path, samples: int) -> np.ndarray | None:
    """``groups.npy`` of ``data/raw`` (or a copy of it), or None where the data has none."""
    path = raw_dir / GROUPS_FILE
    if not path.is_file():
        return None
    try:
        groups = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise MlcycleError(f"{path}: unreadable array ({error})") from None
    if groups.dtype.kind not in "iu" or groups.shape != (samples,):
        raise MlcycleError(
            f"{path}: {groups.dtype} {groups.shape}; expected integers ({samples},), one group "
            "per image"
        )
    return groups.astype(np.int64, copy=False)


def write_splits(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]], out_dir: Path, info: Mapping[str, Any]
) -> None:
    """Write ``<split>.npz`` (images, labels, raw row indices) and ``preprocess.json``."""
    with atomic_directory(out_dir) as tmp:
        write_split_files(splits, tmp, info)


def write_split_files(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]], folder: Path, info: Mapping[str, Any]
) -> None:
    """The files of ``data/processed`` into an existing folder (no atomicity of its own)."""
    for name, (dataset, indices) in splits.items():
        np.savez(
            folder / f"{name}.npz", images=dataset.images, labels=dataset.labels, indices=indices
        )
    (folder / "preprocess.json").write_text(json.dumps(dict(info), indent=2) + "\n")


def split_indices(processed_dir: Path, split: str) -> np.ndarray:
    """The raw row index of each image of one split of ``data/processed``."""
    with np.load(processed_dir / f"{split}.npz") as arrays:
        return arrays["indices"]


def read_split(processed_dir: Path, split: str) -> tuple[ImageDataset, dict[str, Any]]:
    """One split of ``data/processed`` with the preprocessing info (stats, classes, shape)."""
    path = processed_dir / f"{split}.npz"
    if not path.is_file():
        raise MlcycleError(f"{path}: not found; run the preprocess stage first")
    info = read_json(processed_dir / "preprocess.json")
    with np.load(path) as arrays:
        dataset = ImageDataset(arrays["images"], arrays["labels"], tuple(info["class_names"]))
    return dataset, info

"""The monitoring reference: what a model version was trained on and how it answered, kept
beside its metrics so that live traffic can later be compared with exactly that version.

Written by the evaluate stage as one small ``.npz`` (no pickle: plain arrays only) and logged to
the version's MLflow run, so the monitor finds the reference of whichever version is served.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset, atomic_path, read_split, split_indices
from tasks.monitoring.features import FEATURES, image_features

FORMAT_VERSION = 1
REFERENCE_FILE_NAME = "monitoring_reference.npz"
# The run's artifact folder of the reference: the evaluate stage logs it there, the monitor
# fetches `monitoring/monitoring_reference.npz` from the served version's run.
REFERENCE_ARTIFACT_DIR = "monitoring"


class MonitoringReferenceError(MlcycleError):
    """A monitoring reference file that is missing, damaged or of another format."""


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames and arrays have no single truth value
class Reference:
    """What one model version saw and said.

    ``features``: ``image_features`` of the train split (what the inputs looked like);
    ``val_predicted`` / ``val_confidence``: the predicted class and top probability on the
    validation split (held out, so as honest as live traffic: the train split would make the
    model look surer than it is); ``test_accuracy``: the version's score, None when unknown.
    """

    features: pd.DataFrame
    class_names: tuple[str, ...]
    val_predicted: np.ndarray
    val_confidence: np.ndarray
    image_shape: tuple[int, int, int]
    test_accuracy: float | None

    def predicted_distribution(self) -> np.ndarray:
        """Share of validation predictions per class, in ``class_names`` order."""
        counts = np.bincount(self.val_predicted, minlength=len(self.class_names))
        return counts / max(len(self.val_predicted), 1)

    def low_confidence_share(self, low_confidence: float) -> float:
        """Share of validation predictions whose top probability is below ``low_confidence``."""
        if len(self.val_confidence) == 0:
            return 0.0
        return float(np.mean(self.val_confidence < low_confidence))


def build_reference(
    train_images: np.ndarray,
    val_probabilities: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    test_accuracy: float | None,
) -> Reference:
    """A reference from the train images (uint8 N x H x W x C, as ``data/processed`` holds them)
    and the model's softmax output on the validation images (N x K)."""
    class_names = tuple(class_names)
    if train_images.ndim != 4 or train_images.dtype != np.uint8:
        raise ValueError(
            f"train images must be uint8 (N, H, W, C), got {train_images.dtype} "
            f"{train_images.shape}"
        )
    if val_probabilities.ndim != 2 or val_probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"validation probabilities must be (N, {len(class_names)}), got "
            f"{val_probabilities.shape}"
        )
    height, width, channels = train_images.shape[1:]
    return Reference(
        features=image_features(train_images),
        class_names=class_names,
        val_predicted=val_probabilities.argmax(axis=1).astype(np.int64),
        val_confidence=val_probabilities.max(axis=1).astype(np.float64),
        image_shape=(int(height), int(width), int(channels)),
        test_accuracy=None if test_accuracy is None else float(test_accuracy),
    )


def reference_from_split(
    model_path: Path, processed_dir: Path, test_accuracy: float | None, newest_rows: int = 0
) -> Reference:
    """The reference of the model in ``model_path``: features of ``processed_dir``'s train split,
    its softmax on the validation split.

    When the data holds served feedback (``feedback_rows`` in ``preprocess.json``: it comes
    last, newest last) and ``newest_rows`` > 0, only the train and val images among the newest
    ``newest_rows`` of the data count: after a retrain on a shifted population, live traffic is
    compared with that population, not with a training set that is still mostly the old one
    (against which the monitor would say drift for as long as the new world lasts)."""
    # Here, not at the top: the monitor loads references without paying for torch (~500 MB).
    import torch

    from tasks.core.model_file import load_model, predict_logits

    model, _ = load_model(model_path)
    train, info = read_split(processed_dir, "train")
    val, _ = read_split(processed_dir, "val")
    train, val = newest_of(processed_dir, info, train, val, newest_rows)
    logits = predict_logits(model, torch.from_numpy(val.images))
    probabilities = torch.softmax(logits.float(), dim=1).numpy()
    return build_reference(train.images, probabilities, train.class_names, test_accuracy)


def newest_of(
    processed_dir: Path,
    info: dict,
    train: ImageDataset,
    val: ImageDataset,
    newest_rows: int,
) -> tuple[ImageDataset, ImageDataset]:
    """``train`` and ``val`` cut to their rows among the data's newest ``newest_rows`` (by the
    raw row index each split keeps), when the data holds feedback; unchanged otherwise, or
    when the cut would leave a split empty."""
    feedback = info.get("feedback_rows")
    if not newest_rows or not feedback:
        return train, val
    cut = max(0, int(feedback[1]) - newest_rows)
    kept = []
    for split, dataset in (("train", train), ("val", val)):
        rows = np.flatnonzero(split_indices(processed_dir, split) >= cut)
        if not len(rows):
            return train, val
        kept.append(ImageDataset(dataset.images[rows], dataset.labels[rows], dataset.class_names))
    return kept[0], kept[1]


def save_reference(reference: Reference, path: Path) -> Path:
    """Write ``reference`` to ``path`` (``.npz``) atomically; the bytes depend on its contents
    only, so DVC sees an unchanged reference as unchanged."""
    accuracy = np.nan if reference.test_accuracy is None else reference.test_accuracy
    # Through a handle: given a path, numpy appends ".npz" to the temporary file's name.
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez_compressed(
            handle,
            format_version=np.int64(FORMAT_VERSION),
            feature_names=np.array(reference.features.columns, dtype=str),
            features=reference.features.to_numpy(dtype=np.float64),
            class_names=np.array(reference.class_names, dtype=str),
            val_predicted=reference.val_predicted.astype(np.int64),
            val_confidence=reference.val_confidence.astype(np.float64),
            image_shape=np.array(reference.image_shape, dtype=np.int64),
            test_accuracy=np.float64(accuracy),
        )
    return path


def load_reference(path: Path) -> Reference:
    """Read a reference written by ``save_reference``; a missing, damaged or foreign file is a
    ``MonitoringReferenceError`` naming it."""
    if not path.is_file():
        raise MonitoringReferenceError(f"{path}: not found; the evaluate stage writes it")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError("a single array, not an .npz archive")
        with loaded:
            fields = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise MonitoringReferenceError(
            f"{path}: not a monitoring reference written by the evaluate stage "
            f"({type(error).__name__}: {error})"
        ) from None
    return _reference_from_arrays(path, fields)


def _reference_from_arrays(path: Path, fields: dict[str, np.ndarray]) -> Reference:
    expected = {
        "format_version",
        "feature_names",
        "features",
        "class_names",
        "val_predicted",
        "val_confidence",
        "image_shape",
        "test_accuracy",
    }
    if missing := sorted(expected - set(fields)):
        raise MonitoringReferenceError(
            f"{path}: not a monitoring reference written by the evaluate stage "
            f"(missing {', '.join(missing)})"
        )
    version = int(fields["format_version"])
    if version != FORMAT_VERSION:
        raise MonitoringReferenceError(
            f"{path}: reference format {version}, this code reads {FORMAT_VERSION}; "
            "re-run the evaluate stage"
        )
    names = tuple(str(name) for name in fields["feature_names"])
    if names != FEATURES:
        # Features computed by other code cannot be compared with today's: a stale reference.
        raise MonitoringReferenceError(
            f"{path}: reference features {list(names)} differ from this code's "
            f"{list(FEATURES)}; re-run the evaluate stage"
        )
    features = fields["features"]
    class_names = tuple(str(name) for name in fields["class_names"])
    predicted, confidence = fields["val_predicted"], fields["val_confidence"]
    image_shape = tuple(int(side) for side in fields["image_shape"])
    problems = []
    if features.ndim != 2 or features.shape[1] != len(names):
        problems.append(f"features have shape {features.shape}")
    if predicted.shape != confidence.shape or predicted.ndim != 1:
        problems.append(f"val_predicted {predicted.shape} vs val_confidence {confidence.shape}")
    elif len(predicted) and (predicted.min() < 0 or predicted.max() >= len(class_names)):
        problems.append(f"val_predicted outside 0..{len(class_names) - 1}")
    if len(image_shape) != 3:
        problems.append(f"image_shape {image_shape}")
    if problems:
        raise MonitoringReferenceError(
            f"{path}: inconsistent monitoring reference ({'; '.join(problems)})"
        )
    accuracy = float(fields["test_accuracy"])
    return Reference(
        features=pd.DataFrame(features, columns=list(names)),
        class_names=class_names,
        val_predicted=predicted.astype(np.int64),
        val_confidence=confidence.astype(np.float64),
        image_shape=(image_shape[0], image_shape[1], image_shape[2]),
        test_accuracy=None if np.isnan(accuracy) else accuracy,
    )

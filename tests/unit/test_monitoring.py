"""Drift monitoring's statistics on real data: scikit-learn's digits as the collect stage lands
them, a logistic regression's real probabilities, windows of held-out digits drifted the ways
live traffic drifts (shifted, rotated, noisy, faded, unsure, mislabelled) and not at all."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import MonitorParams
from tasks.core.prediction_log.readers import UNLABELLED
from tasks.lifecycle.monitor_served import MonitorError, Served
from tasks.lifecycle.monitor_window import batch_arrays
from tasks.monitoring.drift import compare
from tasks.monitoring.features import FEATURES, image_features
from tasks.monitoring.reference import (
    MonitoringReferenceError,
    Reference,
    build_reference,
    load_reference,
    newest_of,
    save_reference,
)
from tasks.monitoring.report import write_report
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, DriftInputError, DriftResult
from tasks.stages.collecting.digits import digit_pixels

WINDOW = 400  # held-out digits per window: above monitor.min_rows, below the 527 held out


@dataclass(frozen=True)
class Digits:
    reference: Reference
    held_out: np.ndarray  # uint8 (N, 8, 8, 1), never seen by the classifier or the reference
    held_out_labels: np.ndarray
    classifier: object

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:  # scikit-learn refuses to predict nothing
            return np.empty((0, len(self.reference.class_names)))
        return self.classifier.predict_proba(images.reshape(len(images), -1) / 255.0)


@pytest.fixture(scope="module")
def digits() -> Digits:
    """1,000 train digits (the reference's features), 270 validation digits (its predictions),
    527 held out; the classifier is a real one, fitted on the train digits only."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    images = digit_pixels(data.images)  # as the collect stage lands them
    order = np.random.default_rng(0).permutation(len(images))
    train, val, held = order[:1000], order[1000:1270], order[1270:]
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(images[train].reshape(len(train), -1) / 255.0, data.target[train])
    held_pixels = images[held].reshape(len(held), -1) / 255.0
    test_accuracy = float(classifier.score(held_pixels, data.target[held]))
    val_probabilities = classifier.predict_proba(images[val].reshape(len(val), -1) / 255.0)
    reference = build_reference(
        images[train], val_probabilities, [str(name) for name in data.target_names], test_accuracy
    )
    return Digits(reference, images[held], data.target[held], classifier)


@pytest.fixture(scope="module")
def params() -> MonitorParams:
    """The repository's own thresholds: the tests judge the defaults users get."""
    from tasks.core.config import load_params
    from tests.helpers import REPO_ROOT

    return load_params(REPO_ROOT / "params.yaml").monitor


def window(digits: Digits, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).choice(len(digits.held_out), WINDOW, replace=False)
    return digits.held_out[rows], digits.held_out_labels[rows]


def judged(digits: Digits, images: np.ndarray, params: MonitorParams, **kwargs) -> DriftResult:
    return compare(digits.reference, images, digits.probabilities(images), params, **kwargs)


def check(result: DriftResult, name: str):
    return next(c for c in result.checks if c.name == name)


def drifted_features(result: DriftResult) -> set[str]:
    return {
        c.name.removeprefix("feature.") for c in result.checks if c.kind == "feature" and c.drifted
    }


def shifted(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Moved by whole pixels, the uncovered edge black (as a badly cropped camera frame)."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(rows, 0) : height + min(rows, 0), max(cols, 0) : width + min(cols, 0)] = images[
        :, max(-rows, 0) : height + min(-rows, 0), max(-cols, 0) : width + min(-cols, 0)
    ]
    return out


def rotated(images: np.ndarray, degrees: float) -> np.ndarray:
    from scipy import ndimage

    turned = ndimage.rotate(images.astype(float), degrees, axes=(1, 2), reshape=False, order=1)
    return np.clip(np.rint(turned), 0, 255).astype(np.uint8)


# --- features ----------------------------------------------------------------------------------


def test_features_place_the_ink():
    images = np.zeros((3, 5, 5, 1), dtype=np.uint8)
    images[0, 0, 4] = 200  # one bright pixel, top right
    images[1] = 90  # all one grey: blank, centred
    features = image_features(images)
    assert list(features.columns) == list(FEATURES)
    first, flat, black = (features.iloc[i] for i in range(3))
    assert (first.row_centre, first.col_centre, first.row_spread) == (0.0, 1.0, 0.0)
    assert first.border_mean == pytest.approx(200 / 16) and first.centre_share == 0.0
    assert (first.blank, flat.blank, black.blank) == (0.0, 1.0, 1.0)
    assert (flat.row_centre, flat.col_centre, flat["std"], flat.edge) == (0.5, 0.5, 0.0, 0.0)
    # No brightness at all: centred, never NaN (a NaN row would silently leave the tests).
    assert (black.row_centre, black.col_centre, black.slant) == (0.5, 0.5, 0.0)
    assert not features.isna().any().any()


def test_features_of_a_diagonal_stroke_have_the_slant_sign():
    down = np.zeros((1, 8, 8, 1), dtype=np.uint8)
    down[0, np.arange(8), np.arange(8)] = 255  # top left to bottom right
    up = down[:, :, ::-1]
    assert image_features(down).slant[0] == pytest.approx(0.5)
    assert image_features(up).slant[0] == pytest.approx(-0.5)


def test_features_of_many_images_are_cheap_and_chunked(digits):
    import time

    many = np.resize(digits.held_out, (100_000, 8, 8, 1))
    started = time.perf_counter()
    features = image_features(many)
    assert time.perf_counter() - started < 5  # ~0.3 s here; generous for loaded CI machines
    assert len(features) == len(many)
    # Chunk boundaries change nothing: the 100,000th row equals its image's own features.
    np.testing.assert_allclose(
        features.iloc[-1].to_numpy(), image_features(many[-1:]).iloc[0].to_numpy()
    )


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_held_out_digits_raise_no_alarm(digits, params, seed):
    images, labels = window(digits, seed)
    result = judged(digits, images, params, labels=labels)
    assert result.decision == NO_DRIFT, result.summary_rows()
    assert result.drifted == () and result.rows == WINDOW
    assert result.drift_share is not None and result.drift_share < params.drift_share
    assert check(result, "accuracy").value == result.live_accuracy


def test_a_one_pixel_shift_is_input_drift_along_its_axis(digits, params):
    images, _ = window(digits)
    result = judged(digits, shifted(images, 0, 1), params)
    assert result.decision == DRIFT
    assert check(result, "input").drifted
    moved = drifted_features(result)
    assert {"col_centre", "border_mean"} <= moved
    assert "row_centre" not in moved  # a sideways shift leaves the vertical centre alone


def test_a_rotation_is_input_drift_in_the_slant(digits, params):
    images, _ = window(digits)
    result = judged(digits, rotated(images, 20), params)
    assert result.decision == DRIFT and check(result, "input").drifted
    assert {"slant", "col_spread"} <= drifted_features(result)


def test_noise_is_input_drift_in_texture(digits, params):
    images, _ = window(digits)
    noise = np.random.default_rng(1).normal(0, 40, images.shape)
    result = judged(digits, np.clip(images + noise, 0, 255).astype(np.uint8), params)
    assert result.decision == DRIFT and check(result, "input").drifted
    assert {"edge", "border_mean"} <= drifted_features(result)


def test_faded_digits_are_input_drift_in_brightness_not_position(digits, params):
    images, _ = window(digits)
    result = judged(digits, (images // 2).astype(np.uint8), params)
    assert result.decision == DRIFT and check(result, "input").drifted
    moved = drifted_features(result)
    assert {"mean", "std", "max"} <= moved
    assert not moved & {"row_centre", "col_centre", "slant"}  # halving keeps every moment


def test_other_classes_are_prediction_drift(digits, params):
    images, labels = digits.held_out, digits.held_out_labels
    low_digits = images[labels < 5]  # traffic of 0..4 only: half the classes never predicted
    result = judged(digits, low_digits, params)
    assert result.decision == DRIFT
    assert check(result, "prediction").drifted
    assert check(result, "prediction").value < 1e-6


def test_blended_digits_are_unsure_predictions(digits, params):
    images, _ = window(digits)
    other, _ = window(digits, seed=1)
    blends = ((images.astype(np.uint16) + other) // 2).astype(np.uint8)  # two digits in one
    result = judged(digits, blends, params)
    low = check(result, "low_confidence")
    assert low.drifted and low.value > params.max_low_confidence_increase
    assert check(result, "confidence").drifted  # Evidently's test on the values agrees


def test_wrong_feedback_labels_are_an_accuracy_drop(digits, params):
    images, labels = window(digits)
    wrong = np.random.default_rng(0).permutation(labels)
    result = judged(digits, images, params, labels=wrong)
    assert result.decision == DRIFT
    assert [c.name for c in result.drifted] == ["accuracy"]  # inputs and outputs look normal
    assert result.live_accuracy < digits.reference.test_accuracy - params.max_accuracy_drop
    assert result.labelled == WINDOW


def test_too_few_labels_are_not_judged(digits, params):
    images, labels = window(digits)
    few = np.full(len(labels), -1)
    few[: params.min_labels - 1] = (labels[: params.min_labels - 1] + 1) % 10  # all wrong
    result = judged(digits, images, params, labels=few)
    accuracy = check(result, "accuracy")
    assert result.decision == NO_DRIFT and result.live_accuracy is None
    assert accuracy.value is None and not accuracy.drifted and "not judged" in accuracy.detail
    assert result.labelled == params.min_labels - 1


@pytest.mark.parametrize("rows", [0, 10])
def test_a_small_window_is_not_enough_data(digits, params, rows):
    images = digits.held_out[:rows]
    result = judged(digits, images, params)
    assert result.decision == NOT_ENOUGH_DATA
    assert (result.rows, result.checks, result.drift_share) == (rows, (), None)
    assert result.metrics() == {"rows": float(rows), "labelled": 0.0}


def test_an_empty_log_of_any_shape_is_not_enough_data(digits, params):
    empty = compare(digits.reference, np.empty((0,)), np.empty((0,)), params, np.empty(0))
    assert empty.decision == NOT_ENOUGH_DATA and empty.rows == 0


def test_metrics_and_summary_are_flat(digits, params):
    images, labels = window(digits)
    result = judged(digits, images, params, labels=labels)
    metrics = result.metrics()
    assert metrics["drift"] == 0.0 and metrics["rows"] == WINDOW
    assert metrics["input.drift_share"] == result.drift_share
    assert metrics["accuracy.live_accuracy"] == result.live_accuracy
    assert {"prediction.p_value", "confidence.p_value", "low_confidence.increase"} <= set(metrics)
    assert {f"feature.{name}.p_value" for name in FEATURES} <= set(metrics)
    assert all(isinstance(value, float) for value in metrics.values())
    rows = result.summary_rows()
    assert len(rows) == len(result.checks) and rows[0]["check"] == "input"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"images": np.zeros((300, 8, 8, 3), np.uint8)}, "images"),
        ({"probabilities": np.full((300, 3), 1 / 3)}, "probabilities"),
        ({"labels": np.full(300, 10)}, "labels"),
        ({"labels": np.zeros(299, np.int64)}, "labels"),
    ],
)
def test_a_window_that_does_not_fit_is_named(digits, params, change, field):
    images = digits.held_out[:300]
    arguments = {
        "images": images,
        "probabilities": digits.probabilities(images),
        "labels": None,
    } | change
    with pytest.raises(DriftInputError, match=rf"^{field}: expected"):
        compare(digits.reference, params=params, **arguments)


# --- the reference file ------------------------------------------------------------------------


def test_a_reference_of_the_newest_rows_stops_the_alarm_once_retrained_on_the_new_world(
    digits, params, tmp_path
):
    """A retrain on feedback of a faded population: against the whole training split (mostly
    the old, bright digits) faded traffic stays input drift for as long as it lasts; against the
    newest rows, the population the version was retrained on, it is what the model expects."""
    from sklearn.datasets import load_digits

    from tasks.core.files import read_split

    images = digit_pixels(load_digits().images)
    labels = load_digits().target
    faded = (images // 2).astype(np.uint8)
    order = np.random.default_rng(1).permutation(len(images))
    # Raw rows: 0..899 the source (train 0..799, val 800..899), 900..1499 the feedback, last.
    parts = {
        "train": (
            np.concatenate([images[order[:800]], faded[order[800:1300]]]),
            np.concatenate([order[:800], order[800:1300]]),
            np.concatenate([np.arange(800), np.arange(900, 1400)]),
        ),
        "val": (
            np.concatenate([images[order[1300:1400]], faded[order[1400:1500]]]),
            np.concatenate([order[1300:1400], order[1400:1500]]),
            np.concatenate([np.arange(800, 900), np.arange(1400, 1500)]),
        ),
    }
    processed = tmp_path / "processed"
    processed.mkdir()
    for split, (split_images, rows, indices) in parts.items():
        np.savez(
            processed / f"{split}.npz", images=split_images, labels=labels[rows], indices=indices
        )
    names = [str(k) for k in range(10)]
    (processed / "preprocess.json").write_text(
        json.dumps({"class_names": names, "feedback_rows": [900, 1500]})
    )
    train, info = read_split(processed, "train")
    val, _ = read_split(processed, "val")
    traffic = faded[order[1500:]]  # 297 faded digits neither split holds

    def verdict(train_part, val_part) -> DriftResult:
        reference = build_reference(
            train_part.images, digits.probabilities(val_part.images), names, None
        )
        return compare(reference, traffic, digits.probabilities(traffic), params)

    assert verdict(train, val).decision == DRIFT
    assert check(verdict(train, val), "input").drifted
    newest_train, newest_val = newest_of(processed, info, train, val, 600)
    assert (len(newest_train.labels), len(newest_val.labels)) == (500, 100)
    assert np.array_equal(newest_train.images, faded[order[800:1300]])
    assert verdict(newest_train, newest_val).decision == NO_DRIFT
    # 0, or data without feedback: the whole splits, as before
    for kept in (
        newest_of(processed, info, train, val, 0),
        newest_of(processed, {"class_names": names}, train, val, 600),
    ):
        assert kept[0] is train and kept[1] is val


def test_reference_round_trip(digits, tmp_path):
    path = save_reference(digits.reference, tmp_path / "reference.npz")
    loaded = load_reference(path)
    original = digits.reference
    assert loaded.features.equals(original.features)
    np.testing.assert_array_equal(loaded.val_predicted, original.val_predicted)
    np.testing.assert_array_equal(loaded.val_confidence, original.val_confidence)
    assert (loaded.class_names, loaded.image_shape) == (original.class_names, (8, 8, 1))
    assert loaded.test_accuracy == original.test_accuracy
    assert path.stat().st_size < 200_000
    with np.load(path, allow_pickle=False) as arrays:  # plain arrays: no pickle needed
        assert "features" in arrays.files
    # Same reference, same bytes: DVC sees an unchanged reference as unchanged.
    again = save_reference(original, tmp_path / "again.npz")
    assert again.read_bytes() == path.read_bytes()
    assert {p.name for p in tmp_path.iterdir()} == {"reference.npz", "again.npz"}  # no temp


def test_reference_without_test_accuracy_round_trips(digits, tmp_path):
    reference = Reference(**{**vars(digits.reference), "test_accuracy": None})
    assert load_reference(save_reference(reference, tmp_path / "r.npz")).test_accuracy is None


def test_missing_reference_is_named(tmp_path):
    with pytest.raises(
        MonitoringReferenceError, match=r"absent\.npz: not found; the evaluate stage"
    ):
        load_reference(tmp_path / "absent.npz")


def _write_npy(path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.arange(3))


def _write_other_npz(path: Path) -> None:
    with path.open("wb") as handle:
        np.savez(handle, other=np.arange(3))


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda path: path.write_bytes(b"not a zip at all"), "not a monitoring reference"),
        (_write_npy, "not a monitoring reference"),
        (_write_other_npz, "missing class_names"),
    ],
)
def test_a_file_that_is_no_reference_is_named(tmp_path, write, reason):
    path = tmp_path / "reference.npz"
    write(path)
    with pytest.raises(MonitoringReferenceError, match=rf"reference\.npz: .*{reason}"):
        load_reference(path)


def test_a_truncated_reference_is_named(digits, tmp_path):
    path = save_reference(digits.reference, tmp_path / "reference.npz")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(
        MonitoringReferenceError, match=r"reference\.npz: not a monitoring reference"
    ):
        load_reference(path)


def test_a_reference_from_other_features_is_stale(digits, tmp_path):
    old = digits.reference.features.rename(columns={"border_mean": "bright_share"})
    reference = Reference(**{**vars(digits.reference), "features": old})
    path = save_reference(reference, tmp_path / "reference.npz")
    with pytest.raises(MonitoringReferenceError, match=r"re-run the evaluate stage"):
        load_reference(path)


# --- the report --------------------------------------------------------------------------------


def test_report_is_one_readable_offline_page(digits, params, tmp_path):
    images, _ = window(digits)
    images = rotated(images, 20)
    probabilities = digits.probabilities(images)
    result = compare(digits.reference, images, probabilities, params)
    target = tmp_path / "reports" / "monitoring" / "drift.html"
    written = datetime(2026, 12, 7, 14, 5, 30, tzinfo=UTC)
    path = write_report(
        digits.reference, images, probabilities, result, target, model="digits v3", written=written
    )
    assert path == target and [p.name for p in target.parent.iterdir()] == ["drift.html"]
    page = target.read_text()
    assert "Drift monitoring: drift" in page
    # the tab and a list of reports say what it is: Evidently's own page has no <title>
    titles = re.findall(r"<title>([^<]*)</title>", page.split("</head>", 1)[0])
    assert titles == ["Drift report: digits v3, drift (2026-12-07 14:05 UTC)"]
    assert "digits v3: 400 rows in the window" in page
    for name in (*FEATURES, "predicted_class", "confidence"):
        assert name in page
    assert '<script src="' not in page  # Evidently's JavaScript is inside: opens offline
    assert len(page) < 10_000_000


def test_report_of_too_little_data_says_so(digits, params, tmp_path):
    images = digits.held_out[:5]
    probabilities = digits.probabilities(images)
    result = compare(digits.reference, images, probabilities, params)
    path = write_report(digits.reference, images, probabilities, result, tmp_path / "r.html")
    assert "Drift monitoring: not enough data" in path.read_text()
    assert re.search(
        r"<title>Drift report: not enough data \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\)</title>",
        path.read_text(),
    )


def test_report_takes_features_computed_once(digits, params, tmp_path):
    images, _ = window(digits)
    probabilities = digits.probabilities(images)
    result = compare(digits.reference, images, probabilities, params)
    features = image_features(images)
    path = write_report(digits.reference, features, probabilities, result, tmp_path / "r.html")
    assert "Drift monitoring: no drift" in Path(path).read_text()


def test_report_of_other_rows_than_decided_is_refused(digits, params, tmp_path):
    images, _ = window(digits)
    probabilities = digits.probabilities(images)
    result = compare(digits.reference, images, probabilities, params)
    with pytest.raises(DriftInputError, match=r"decided on 400"):
        write_report(digits.reference, images[:10], probabilities[:10], result, tmp_path / "r.html")
    assert not list(tmp_path.iterdir())


# --- a --batch file's labels and images, checked against the served version -----------------


def batch_reference(classes: int = 3):
    from types import SimpleNamespace

    return SimpleNamespace(
        class_names=tuple(f"c{k}" for k in range(classes)), image_shape=(8, 8, 1)
    )


def batch_file(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"images": images} | ({} if labels is None else {"labels": labels})
    np.savez(path, **arrays)
    return path


SERVED = Served("digits", "champion", "4", "run")


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (np.asarray([0, -7, 1, -7]), "'labels' holds -7, outside the classes; expected one "),
        (np.asarray([0, 99, 1, -1]), "'labels' holds -1, 99, outside the classes"),
        (np.asarray(["cat"] * 4), "'labels' must hold one class index 0-2 of digits v4 per "),
        (np.asarray([0.0, 1.0, 2.0, 0.0]), "got float64 values (0.0, 1.0, 2.0)"),
        (np.asarray([0, 1]), "'labels' has shape (2,); expected one label per image"),
    ],
)
def test_batch_labels_outside_the_classes_are_refused_by_name(labels, reason, tmp_path):
    path = batch_file(tmp_path / "b.npz", np.zeros((4, 8, 8, 1), np.uint8), labels)
    with pytest.raises(MonitorError) as refused:
        batch_arrays(path, SERVED, batch_reference())
    assert str(refused.value).startswith(f"{path}: ") and reason in str(refused.value)


def test_a_batch_is_read_as_the_served_versions_class_indices(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)  # grey without a channel axis
    labelled = batch_file(tmp_path / "l.npz", images, np.asarray([0, 2, 1, 0], np.int32))
    fitted_images, labels = batch_arrays(labelled, SERVED, batch_reference())
    assert fitted_images.shape == (4, 8, 8, 1) and fitted_images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 2, 1, 0]
    _, unlabelled = batch_arrays(batch_file(tmp_path / "u.npz", images), SERVED, batch_reference())
    assert unlabelled.tolist() == [UNLABELLED] * 4


@pytest.mark.parametrize(
    ("images", "reason"),
    [
        *(
            (np.zeros(shape, np.uint8), "with C 1 or 3")
            for shape in [(4, 8, 8, 2), (4, 8, 8, 4), (4, 8), (4, 8, 8, 1, 1)]
        ),
        (np.zeros((0, 8, 8), np.uint8), "'images' is empty"),
        (np.full((4, 8, 8), 0.5), "'images': pixels are float64"),
    ],
)
def test_batch_images_the_model_cannot_take_are_refused_by_name(images, reason, tmp_path):
    path = batch_file(tmp_path / "b.npz", images)
    with pytest.raises(MonitorError) as refused:
        batch_arrays(path, SERVED, batch_reference())
    assert str(refused.value).startswith(f"{path}: ") and reason in str(refused.value)


def test_a_batch_that_is_no_image_archive_is_named(tmp_path):
    with pytest.raises(MonitorError, match="file not found"):
        batch_arrays(tmp_path / "none.npz", SERVED, batch_reference())
    np.savez(tmp_path / "pixels.npz", pixels=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(MonitorError, match=r"pixels\.npz: missing array 'images'"):
        batch_arrays(tmp_path / "pixels.npz", SERVED, batch_reference())

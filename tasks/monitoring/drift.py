"""The drift comparison: a window of live traffic against the served version's reference.

Four questions, each with its threshold in ``params.yaml`` (``monitor:``):

- input drift: do the images look like the train split? One Evidently test per image feature
  (``tasks.monitoring.features``); input drift when at least ``drift_share`` of them drifted;
- prediction drift: are the classes predicted as often as on the validation split?
- confidence drift: has the share of unsure predictions (top probability below
  ``low_confidence``) risen by more than ``max_low_confidence_increase``?
- accuracy: where feedback labels exist, has live accuracy fallen more than
  ``max_accuracy_drop`` below the version's test accuracy?

The p-values come from Evidently (``tasks.monitoring.evidently_run``); the page a person reads
is ``tasks.monitoring.report``'s. Fewer than ``min_rows`` rows decide nothing: ``not enough
data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tasks.monitoring.evidently_run import (
    CATEGORICAL_METHOD,
    CONFIDENCE,
    NUMERIC_METHOD,
    PREDICTED,
    ScoredWindow,
    p_values,
    scored_window,
)
from tasks.monitoring.features import FEATURE_DESCRIPTIONS, FEATURES
from tasks.monitoring.reference import Reference
from tasks.monitoring.verdict import (
    DRIFT,
    NO_DRIFT,
    NOT_ENOUGH_DATA,
    Check,
    DriftInputError,
    DriftResult,
)

if TYPE_CHECKING:  # only the type: tasks.core.config imports torch (via models), ~500 MB
    from tasks.core.config import MonitorParams

NO_LABEL = -1  # a row of the window without a feedback label


def compare(
    reference: Reference,
    images: np.ndarray,
    probabilities: np.ndarray,
    params: MonitorParams,
    labels: np.ndarray | None = None,
) -> DriftResult:
    """Compare a window (uint8 images N x H x W x C, the model's softmax N x K, optional
    feedback labels with -1 where none came) with ``reference``. Every row is tested."""
    rows = len(images)
    labels = _checked_inputs(reference, images, probabilities, labels)
    labelled = int((labels != NO_LABEL).sum()) if labels is not None else 0
    if rows < params.min_rows:
        return DriftResult(NOT_ENOUGH_DATA, rows, (), None, None, labelled)
    window = scored_window(images, probabilities)
    by_column = p_values(reference, window, params.p_value)
    features = _feature_checks(reference, window, by_column, params)
    share = sum(check.drifted for check in features) / len(features)
    accuracy = _accuracy_check(reference, window, labels, params)
    checks = (
        _input_check(share, features, params),
        _prediction_check(reference, window, by_column[PREDICTED], params),
        _low_confidence_check(reference, window, params),
        _confidence_test_check(reference, window, by_column[CONFIDENCE], params),
        accuracy,
        *features,
    )
    decision = DRIFT if any(c.decides and c.drifted for c in checks) else NO_DRIFT
    return DriftResult(decision, rows, checks, share, accuracy.value, labelled)


def _checked_inputs(
    reference: Reference,
    images: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray | None,
) -> np.ndarray | None:
    rows, classes = len(images), len(reference.class_names)
    if rows == 0:  # an empty log: nothing to check, whatever shape the reader gave it
        return None if labels is None else np.asarray(labels).reshape(0)
    if images.dtype != np.uint8 or images.shape[1:] != reference.image_shape:
        raise DriftInputError(
            f"images: expected uint8 (N, {', '.join(map(str, reference.image_shape))}) like the "
            f"reference, got {images.dtype} {images.shape}"
        )
    if probabilities.shape != (rows, classes):
        raise DriftInputError(
            f"probabilities: expected ({rows}, {classes}) for {rows} images and {classes} "
            f"classes, got {probabilities.shape}"
        )
    if not np.isfinite(probabilities).all():
        raise DriftInputError("probabilities: contain NaN or infinite values")
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (rows,) or labels.dtype.kind not in "iu":
        raise DriftInputError(
            f"labels: expected integers of shape ({rows},), got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < NO_LABEL or labels.max() >= classes):
        raise DriftInputError(f"labels: expected {NO_LABEL} (no label) or 0..{classes - 1}")
    return labels


def _feature_checks(
    reference: Reference, window: ScoredWindow, by_column: dict[str, float], params: MonitorParams
) -> list[Check]:
    reference_medians = reference.features.median()
    current_medians = window.features.median()
    return [
        Check(
            name=f"feature.{name}",
            kind="feature",
            statistic="p_value",
            value=by_column[name],
            threshold=params.p_value,
            drifted=by_column[name] < params.p_value,
            decides=False,
            method=NUMERIC_METHOD,
            detail=f"median {reference_medians[name]:.4g} (train) vs "
            f"{current_medians[name]:.4g} (window): {FEATURE_DESCRIPTIONS[name]}",
        )
        for name in FEATURES
    ]


def _input_check(share: float, features: Sequence[Check], params: MonitorParams) -> Check:
    drifted = [check.name.removeprefix("feature.") for check in features if check.drifted]
    return Check(
        name="input",
        kind="input",
        statistic="drift_share",
        value=share,
        threshold=params.drift_share,
        drifted=share >= params.drift_share,
        decides=True,
        method="share of image features with p-value < monitor.p_value",
        detail=f"{len(drifted)} of {len(features)} features drifted"
        + (f": {', '.join(drifted)}" if drifted else ""),
    )


def _prediction_check(
    reference: Reference, window: ScoredWindow, p_value: float, params: MonitorParams
) -> Check:
    classes = len(reference.class_names)
    before = reference.predicted_distribution()
    after = np.bincount(window.predicted, minlength=classes) / len(window.predicted)
    moved = int(np.argmax(np.abs(after - before)))
    return Check(
        name="prediction",
        kind="prediction",
        statistic="p_value",
        value=p_value,
        threshold=params.p_value,
        drifted=p_value < params.p_value,
        decides=True,
        method=CATEGORICAL_METHOD,
        detail=f"largest change: class {reference.class_names[moved]} predicted "
        f"{before[moved]:.1%} (validation) vs {after[moved]:.1%} (window)",
    )


def _low_confidence_check(
    reference: Reference, window: ScoredWindow, params: MonitorParams
) -> Check:
    before = reference.low_confidence_share(params.low_confidence)
    after = float(np.mean(window.confidence < params.low_confidence))
    increase = after - before
    return Check(
        name="low_confidence",
        kind="confidence",
        statistic="increase",
        value=increase,
        threshold=params.max_low_confidence_increase,
        drifted=increase > params.max_low_confidence_increase,
        decides=True,
        method="rise in the share of top probabilities below monitor.low_confidence",
        detail=f"{after:.1%} of predictions below {params.low_confidence:g} (window) vs "
        f"{before:.1%} (validation)",
    )


def _confidence_test_check(
    reference: Reference, window: ScoredWindow, p_value: float, params: MonitorParams
) -> Check:
    return Check(
        name="confidence",
        kind="confidence",
        statistic="p_value",
        value=p_value,
        threshold=params.p_value,
        drifted=p_value < params.p_value,
        decides=False,  # reported: a shift among sure answers (0.99 -> 0.95) harms nothing yet
        method=NUMERIC_METHOD,
        detail=f"median top probability {np.median(reference.val_confidence):.4g} "
        f"(validation) vs {np.median(window.confidence):.4g} (window)",
    )


def _accuracy_check(
    reference: Reference, window: ScoredWindow, labels: np.ndarray | None, params: MonitorParams
) -> Check:
    common = {
        "name": "accuracy",
        "kind": "accuracy",
        "statistic": "live_accuracy",
        "decides": True,
        "method": "accuracy on rows with feedback labels vs the version's test accuracy",
    }
    labelled = labels != NO_LABEL if labels is not None else np.zeros(len(window.predicted), bool)
    count = int(labelled.sum())
    if reference.test_accuracy is None:
        return Check(
            **common,
            value=None,
            threshold=None,
            drifted=False,
            detail="the reference has no test accuracy: not judged",
        )
    threshold = reference.test_accuracy - params.max_accuracy_drop
    if count < params.min_labels:
        return Check(
            **common,
            value=None,
            threshold=threshold,
            drifted=False,
            detail=f"{count} labelled rows, fewer than monitor.min_labels "
            f"({params.min_labels}): not judged",
        )
    assert labels is not None  # count > 0
    accuracy = float(np.mean(window.predicted[labelled] == labels[labelled]))
    return Check(
        **common,
        value=accuracy,
        threshold=threshold,
        drifted=accuracy < threshold,
        detail=f"{accuracy:.1%} on {count} labelled rows vs test accuracy "
        f"{reference.test_accuracy:.1%}",
    )

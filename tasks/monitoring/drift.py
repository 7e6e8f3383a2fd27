"""The drift comparison: a window of live traffic against the served version's reference.

Four questions, each with its threshold in ``params.yaml`` (``monitor:``):

- input drift: do the images look like the train split? One Evidently test per image feature
  (``tasks.monitoring.features``); input drift when at least ``drift_share`` of them drifted;
- prediction drift: are the classes predicted as often as on the validation split?
- confidence drift: has the share of unsure predictions (top probability below
  ``low_confidence``) risen by more than ``max_low_confidence_increase``?
- accuracy: where feedback labels exist, has live accuracy fallen more than
  ``max_accuracy_drop`` below the version's test accuracy?

The p-values come from Evidently (``_run_report``): its Kolmogorov-Smirnov test for every number,
and for the predicted classes a chi-square test of homogeneity registered with it (SciPy's, as
Evidently 0.7 has none: see ``_two_sample_chi2``). Its HTML is the report a person reads. Fewer
than ``min_rows`` rows decide nothing: ``not enough data``.
"""

from __future__ import annotations

import functools
import html
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.core.errors import MlcycleError
from tasks.core.files import atomic_path, unwritable
from tasks.monitoring.features import FEATURE_DESCRIPTIONS, FEATURES, image_features
from tasks.monitoring.reference import Reference

if TYPE_CHECKING:  # only the type: tasks.core.config imports torch (via models), ~500 MB
    from tasks.core.config import MonitorParams

__all__ = [
    "DRIFT",
    "NOT_ENOUGH_DATA",
    "NO_DRIFT",
    "Check",
    "DriftInputError",
    "DriftResult",
    "compare",
    "image_features",
    "report_title",
    "write_report",
]

DRIFT = "drift"
NO_DRIFT = "no drift"
NOT_ENOUGH_DATA = "not enough data"

PREDICTED = "predicted_class"
CONFIDENCE = "confidence"
NUMERIC_TEST = "ks"  # Evidently's two-sample Kolmogorov-Smirnov test: a p-value at any size
CATEGORICAL_TEST = "chi2_two_sample"  # registered with Evidently below


class DriftInputError(MlcycleError):
    """A window that cannot be compared: wrong shapes, types or values, named by field."""


@dataclass(frozen=True)
class Check:
    """One question asked of the window. ``kind``: feature, input, prediction, confidence or
    accuracy. ``value`` is the ``statistic`` (a p-value, a share, an accuracy), None when the
    check could not be judged; ``decides`` is False for what only informs (single features feed
    the input check; the confidence test is there for the report)."""

    name: str
    kind: str
    statistic: str
    value: float | None
    threshold: float | None
    drifted: bool
    decides: bool
    method: str
    detail: str

    @property
    def metric_key(self) -> str:
        return f"{self.name}.{self.statistic}"


@dataclass(frozen=True)
class DriftResult:
    """``decision``: ``drift`` when any deciding check drifted, else ``no drift``; ``not enough
    data`` (and no checks) below ``monitor.min_rows``. ``drift_share``: the share of image
    features that drifted; ``live_accuracy``: None unless ``monitor.min_labels`` rows had
    labels."""

    decision: str
    rows: int
    checks: tuple[Check, ...]
    drift_share: float | None
    live_accuracy: float | None
    labelled: int

    @property
    def drifted(self) -> tuple[Check, ...]:
        """The checks that made the decision ``drift``."""
        return tuple(check for check in self.checks if check.decides and check.drifted)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per check, for a table (console, Prefect artifact)."""
        return [
            {
                "check": check.name,
                "kind": check.kind,
                "statistic": check.statistic,
                "value": check.value,
                "threshold": check.threshold,
                "drifted": check.drifted,
                "decides": check.decides,
                "method": check.method,
                "detail": check.detail,
            }
            for check in self.checks
        ]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: rows, labelled, drift (1/0, absent without a decision), and
        each check's statistic under ``<check>.<statistic>`` (``input.drift_share``,
        ``prediction.p_value``, ``feature.mean.p_value``, ``accuracy.live_accuracy`` ...)."""
        logged = {"rows": float(self.rows), "labelled": float(self.labelled)}
        if self.decision != NOT_ENOUGH_DATA:
            logged["drift"] = 1.0 if self.decision == DRIFT else 0.0
        logged |= {c.metric_key: float(c.value) for c in self.checks if c.value is not None}
        return logged


@dataclass(frozen=True)
class _Window:
    features: pd.DataFrame
    predicted: np.ndarray
    confidence: np.ndarray


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
    labelled = int((labels >= 0).sum()) if labels is not None else 0
    if rows < params.min_rows:
        return DriftResult(NOT_ENOUGH_DATA, rows, (), None, None, labelled)
    window = _window(images, probabilities)
    p_values = _p_values(_run_report(reference, window, params, rendered=False))
    features = _feature_checks(reference, window, p_values, params)
    share = sum(check.drifted for check in features) / len(features)
    accuracy = _accuracy_check(reference, window, labels, params)
    checks = (
        _input_check(share, features, params),
        _prediction_check(reference, window, p_values[PREDICTED], params),
        _low_confidence_check(reference, window, params),
        _confidence_test_check(reference, window, p_values[CONFIDENCE], params),
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
    if len(labels) and (labels.min() < -1 or labels.max() >= classes):
        raise DriftInputError(f"labels: expected -1 (no label) or 0..{classes - 1}")
    return labels


def _window(images: np.ndarray | pd.DataFrame, probabilities: np.ndarray) -> _Window:
    return _Window(
        features=images if isinstance(images, pd.DataFrame) else image_features(images),
        predicted=probabilities.argmax(axis=1),
        confidence=probabilities.max(axis=1).astype(np.float64),
    )


def _feature_checks(
    reference: Reference, window: _Window, p_values: dict[str, float], params: MonitorParams
) -> list[Check]:
    reference_medians = reference.features.median()
    current_medians = window.features.median()
    return [
        Check(
            name=f"feature.{name}",
            kind="feature",
            statistic="p_value",
            value=p_values[name],
            threshold=params.p_value,
            drifted=p_values[name] < params.p_value,
            decides=False,
            method="Evidently ks (two-sample Kolmogorov-Smirnov)",
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
    reference: Reference, window: _Window, p_value: float, params: MonitorParams
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
        method=f"Evidently {CATEGORICAL_TEST} (chi-square test of homogeneity, SciPy)",
        detail=f"largest change: class {reference.class_names[moved]} predicted "
        f"{before[moved]:.1%} (validation) vs {after[moved]:.1%} (window)",
    )


def _low_confidence_check(reference: Reference, window: _Window, params: MonitorParams) -> Check:
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
    reference: Reference, window: _Window, p_value: float, params: MonitorParams
) -> Check:
    return Check(
        name="confidence",
        kind="confidence",
        statistic="p_value",
        value=p_value,
        threshold=params.p_value,
        drifted=p_value < params.p_value,
        decides=False,  # reported: a shift among sure answers (0.99 -> 0.95) harms nothing yet
        method="Evidently ks (two-sample Kolmogorov-Smirnov)",
        detail=f"median top probability {np.median(reference.val_confidence):.4g} "
        f"(validation) vs {np.median(window.confidence):.4g} (window)",
    )


def _accuracy_check(
    reference: Reference, window: _Window, labels: np.ndarray | None, params: MonitorParams
) -> Check:
    common = {
        "name": "accuracy",
        "kind": "accuracy",
        "statistic": "live_accuracy",
        "decides": True,
        "method": "accuracy on rows with feedback labels vs the version's test accuracy",
    }
    labelled = labels >= 0 if labels is not None else np.zeros(len(window.predicted), bool)
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


def write_report(
    reference: Reference,
    images: np.ndarray | pd.DataFrame,
    probabilities: np.ndarray,
    result: DriftResult,
    path: Path,
    *,
    model: str | None = None,
    written: datetime | None = None,
) -> Path:
    """Write an HTML report to ``path`` atomically: the decision and every check, then
    Evidently's reference-vs-window distribution of each feature, of the predicted classes and
    of the confidence. ``images`` may be their ``image_features`` (saves computing them twice).
    ``model`` (``"digits-classifier v3"``) and ``written`` (default: now) go into the page's
    title and heading, so a browser tab or a folder of reports says which is which.

    The page is self-contained (Evidently embeds its JavaScript and font): it opens offline.
    Every row is drawn: Evidently plots binned distributions, so the page stays ~4 MB and the
    p-values on it are the ones ``compare`` decided with.
    """
    written = written or datetime.now(UTC)
    summary = _summary_html(result, model, written)
    title_tag = f"<title>{html.escape(report_title(result, model, written))}</title>"
    if result.decision == NOT_ENOUGH_DATA:
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'>{title_tag}</head>"
            f"<body>{summary}</body></html>"
        )
    else:
        if not len(images) == len(probabilities) == result.rows:
            raise DriftInputError(
                f"images/probabilities: {len(images)} and {len(probabilities)} rows, but the "
                f"result was decided on {result.rows}"
            )
        window = _window(images, probabilities)
        snapshot = _run_report(reference, window, _thresholds_of(result), rendered=True)
        with _quiet_evidently():
            page = snapshot.get_html_str(as_iframe=False)
        # Evidently's page has no <title>: a browser tab read "file:///.../2026...-v3.html"
        page = page.replace("<head>", f"<head>{title_tag}", 1)
        page = page.replace("<body>", f"<body>{summary}", 1)
    # unwritable: a full disk or a read-only folder while the page is written is one line
    # naming the report, not an OSError traceback from inside the write
    with unwritable(path), atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


@dataclass(frozen=True)
class _Thresholds:
    """The two thresholds the Evidently report needs, read back from a result's checks."""

    p_value: float
    drift_share: float


def _thresholds_of(result: DriftResult) -> _Thresholds:
    by_name = {check.name: check for check in result.checks}
    p_value = by_name["prediction"].threshold
    drift_share = by_name["input"].threshold
    assert p_value is not None and drift_share is not None
    return _Thresholds(p_value=p_value, drift_share=drift_share)


def report_title(result: DriftResult, model: str | None, written: datetime) -> str:
    """``Drift report: digits-classifier v3, drift (2026-12-07 14:05 UTC)``."""
    subject = f"{model}, " if model else ""
    return f"Drift report: {subject}{result.decision} ({_utc_minute(written)})"


def _utc_minute(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _summary_html(result: DriftResult, model: str | None, written: datetime) -> str:
    colour = {DRIFT: "#c62828", NO_DRIFT: "#2e7d32"}.get(result.decision, "#6d6d6d")
    header = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{name}</th>"
        for name in ("check", "value", "threshold", "drifted", "decides", "method", "detail")
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td style='padding:2px 8px'>{html.escape(str(cell))}</td>"
            for cell in (
                check.name,
                "-" if check.value is None else f"{check.value:.4g}",
                "-" if check.threshold is None else f"{check.threshold:.4g}",
                "yes" if check.drifted else "no",
                "yes" if check.decides else "no",
                check.method,
                check.detail,
            )
        )
        + "</tr>"
        for check in result.checks
    )
    return (
        "<section style='font-family:sans-serif;margin:16px'>"
        f"<h1 style='color:{colour}'>Drift monitoring: {html.escape(result.decision)}</h1>"
        f"<p>{html.escape(f'{model}: ' if model else '')}{result.rows} rows in the window, "
        f"{result.labelled} with feedback labels; written {_utc_minute(written)}.</p>"
        f"<table style='border-collapse:collapse;font-size:13px'><tr>{header}</tr>{body}</table>"
        "</section>"
    )


def _run_report(
    reference: Reference, window: _Window, params: MonitorParams | _Thresholds, rendered: bool
) -> Any:
    """One Evidently report over both halves of the reference: the train split's features and
    the validation split's predictions sit in one table, each half NaN where the other has
    values; Evidently drops NaN per column, so each test sees its own reference rows."""
    evidently = _evidently()
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    names = np.asarray(reference.class_names, dtype=object)
    current = window.features.assign(
        **{PREDICTED: names[window.predicted], CONFIDENCE: window.confidence}
    )
    outputs = pd.DataFrame(
        {PREDICTED: names[reference.val_predicted], CONFIDENCE: reference.val_confidence}
    )
    past = pd.concat([reference.features, outputs], ignore_index=True)
    definition = evidently.DataDefinition(
        numerical_columns=[*FEATURES, CONFIDENCE], categorical_columns=[PREDICTED]
    )
    metrics: list[Any] = [
        ValueDrift(column=name, method=NUMERIC_TEST, threshold=params.p_value)
        for name in (*FEATURES, CONFIDENCE)
    ]
    metrics.append(ValueDrift(column=PREDICTED, method=CATEGORICAL_TEST, threshold=params.p_value))
    if rendered:  # the headline tile of the page; compare counts the drifted features itself
        metrics.insert(
            0,
            DriftedColumnsCount(
                columns=list(FEATURES),
                method=NUMERIC_TEST,
                threshold=params.p_value,
                drift_share=params.drift_share,
            ),
        )
    report = evidently.Report(metrics, include_tests=rendered)
    with _quiet_evidently():
        return report.run(
            evidently.Dataset.from_pandas(current, data_definition=definition),
            evidently.Dataset.from_pandas(past, data_definition=definition),
        )


def _p_values(snapshot: Any) -> dict[str, float]:
    """Each ValueDrift's score by column (for the tests used here, the p-value)."""
    return {
        metric["config"]["column"]: float(metric["value"])
        for metric in snapshot.dict()["metrics"]
        if metric["config"]["type"].endswith(":ValueDrift")
    }


@functools.cache
def _evidently() -> Any:
    """Evidently, imported once, with our categorical test registered."""
    _allow_evidently_on_pandas_3()
    with _quiet_evidently():
        import evidently
        from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
        from evidently.legacy.core import ColumnType

    register_stattest(
        StatTest(
            name=CATEGORICAL_TEST,
            display_name="chi-square test of homogeneity p_value",
            allowed_feature_types=[ColumnType.Categorical],
        ),
        default_impl=_two_sample_chi2,
    )
    return evidently


@contextmanager
def _quiet_evidently() -> Iterator[None]:
    """Evidently 0.7 on pandas 3 and numpy 2.4 warns about its own deprecated calls (pandas'
    ``dropna(inplace=...)``, ``numpy.core``, its web framework's API) and divides by zero when
    its dataset tile correlates constant features (``min``, ``blank``); nobody running the
    monitor can act on either, so they stay out of the log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


def _two_sample_chi2(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """p-value that two samples of categories come from one distribution.

    SciPy, where everything else is Evidently's own, because Evidently 0.7 has no such test:
    its ``chisquare`` (and ``g_test``) take the reference's shares as exact, which turns a
    1,000-row window of the very distribution of a 270-row validation split into "drift" most
    of the time (and any 100,000-row window always); ``z`` and ``fisher_exact`` take two
    categories only; ``TVD`` is a pure-Python permutation test, minutes on 100,000 rows.
    Registered with Evidently, so its report shows this test beside its plots.
    """
    from scipy.stats import chi2_contingency

    categories = sorted(set(reference.dropna()) | set(current.dropna()))
    if len(categories) < 2 or reference.empty or current.empty:
        return 1.0, False  # one category (or one empty sample): nothing can differ
    table = np.array(
        [
            reference.value_counts().reindex(categories, fill_value=0).to_numpy(),
            current.value_counts().reindex(categories, fill_value=0).to_numpy(),
        ]
    )
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return p_value, p_value < threshold


def _allow_evidently_on_pandas_3() -> None:
    """Evidently 0.7.23 (the newest 0.7) imports ``infer_dtype_from_object`` from pandas'
    internals, which pandas 3 removed; only its legacy ``TestColumnsType`` calls it, and nothing
    here uses that. A stand-in that says so if it is ever called lets Evidently import."""
    import pandas.core.dtypes.common as common

    if hasattr(common, "infer_dtype_from_object"):
        return

    def infer_dtype_from_object(dtype: Any) -> Any:
        raise NotImplementedError(
            "pandas 3 removed infer_dtype_from_object; Evidently's legacy TestColumnsType "
            "needs pandas < 3"
        )

    common.infer_dtype_from_object = infer_dtype_from_object  # type: ignore[attr-defined]

"""Evidently at one edge: the table handed to it (the reference's two halves against the
window), the tests asked of it, and what comes back: each column's p-value, or the page a
person reads.

Its Kolmogorov-Smirnov test for every number; for the predicted classes a chi-square test of
homogeneity registered with it (SciPy's, as Evidently 0.7 has none: see ``two_sample_chi2``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.monitoring.features import FEATURES, image_features
from tasks.monitoring.reference import Reference

PREDICTED = "predicted_class"
CONFIDENCE = "confidence"
NUMERIC_TEST = "ks"  # Evidently's two-sample Kolmogorov-Smirnov test: a p-value at any size
CATEGORICAL_TEST = "chi2_two_sample"  # registered with Evidently in _evidently()
NUMERIC_METHOD = f"Evidently {NUMERIC_TEST} (two-sample Kolmogorov-Smirnov)"
CATEGORICAL_METHOD = f"Evidently {CATEGORICAL_TEST} (chi-square test of homogeneity, SciPy)"


@dataclass(frozen=True)
class ScoredWindow:
    """A window as the tests see it: one row of image features per image, the class the model
    predicted and its top probability."""

    features: pd.DataFrame
    predicted: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class Thresholds:
    """What Evidently judges with: a column drifted below ``p_value``; the page's headline
    counts the input as drifted from ``drift_share`` of the features."""

    p_value: float
    drift_share: float


def scored_window(images: np.ndarray | pd.DataFrame, probabilities: np.ndarray) -> ScoredWindow:
    """``images`` (uint8 N x H x W x C, or their ``image_features`` already computed) and the
    model's softmax (N x K) as the tests take them."""
    return ScoredWindow(
        features=images if isinstance(images, pd.DataFrame) else image_features(images),
        predicted=probabilities.argmax(axis=1),
        confidence=probabilities.max(axis=1).astype(np.float64),
    )


def p_values(reference: Reference, window: ScoredWindow, p_value: float) -> dict[str, float]:
    """Each feature's, the confidence's and the predicted class's p-value, by column."""
    snapshot = _run(reference, window, _value_drifts(p_value), include_tests=False)
    return {
        metric["config"]["column"]: float(metric["value"])
        for metric in snapshot.dict()["metrics"]
        if metric["config"]["type"].endswith(":ValueDrift")
    }


def report_page(reference: Reference, window: ScoredWindow, thresholds: Thresholds) -> str:
    """Evidently's self-contained HTML page: a headline tile (drifted features), then the same
    tests ``p_values`` runs, each with its reference-vs-window distribution."""
    _evidently()  # first: imported quietly, our test registered
    from evidently.metrics import DriftedColumnsCount

    headline = DriftedColumnsCount(
        columns=list(FEATURES),
        method=NUMERIC_TEST,
        threshold=thresholds.p_value,
        drift_share=thresholds.drift_share,
    )
    metrics = [headline, *_value_drifts(thresholds.p_value)]
    snapshot = _run(reference, window, metrics, include_tests=True)
    with quiet_evidently():
        return snapshot.get_html_str(as_iframe=False)


def _value_drifts(p_value: float) -> list[Any]:
    _evidently()  # first: imported quietly, our test registered
    from evidently.metrics import ValueDrift

    numeric = [
        ValueDrift(column=name, method=NUMERIC_TEST, threshold=p_value)
        for name in (*FEATURES, CONFIDENCE)
    ]
    return [*numeric, ValueDrift(column=PREDICTED, method=CATEGORICAL_TEST, threshold=p_value)]


def _run(
    reference: Reference, window: ScoredWindow, metrics: list[Any], include_tests: bool
) -> Any:
    """One Evidently report over both halves of the reference: the train split's features and
    the validation split's predictions sit in one table, each half NaN where the other has
    values; Evidently drops NaN per column, so each test sees its own reference rows."""
    evidently = _evidently()
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
    report = evidently.Report(metrics, include_tests=include_tests)
    with quiet_evidently():
        return report.run(
            evidently.Dataset.from_pandas(current, data_definition=definition),
            evidently.Dataset.from_pandas(past, data_definition=definition),
        )


@functools.cache
def _evidently() -> Any:
    """Evidently, imported once, with our categorical test registered. (Evidently 0.7 imports
    a helper pandas 3 removed: pyproject.toml pins pandas < 3 for it.)"""
    with quiet_evidently():
        import evidently
        from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
        from evidently.legacy.core import ColumnType

    register_stattest(
        StatTest(
            name=CATEGORICAL_TEST,
            display_name="chi-square test of homogeneity p_value",
            allowed_feature_types=[ColumnType.Categorical],
        ),
        default_impl=two_sample_chi2,
    )
    return evidently


@contextmanager
def quiet_evidently() -> Iterator[None]:
    """Evidently 0.7 warns about its own deprecated calls (pandas' ``dropna(inplace=...)``,
    ``numpy.core``, its web framework's API) and divides by zero when its dataset tile
    correlates constant features (``min``, ``blank``); nobody running the monitor can act on
    either, so they stay out of the log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


def two_sample_chi2(
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

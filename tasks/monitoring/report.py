"""The drift report a person reads: one self-contained HTML page with the decision and every
check on top, then Evidently's reference-vs-window distributions, titled with the model and
the time so that a browser tab or a folder of reports says which is which.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.files import atomic_path, unwritable
from tasks.monitoring.evidently_run import Thresholds, report_page, scored_window
from tasks.monitoring.reference import Reference
from tasks.monitoring.verdict import DRIFT, NO_DRIFT, NOT_ENOUGH_DATA, DriftInputError, DriftResult

DECISION_COLOURS = {DRIFT: "#c62828", NO_DRIFT: "#2e7d32"}  # red, green
UNDECIDED_COLOUR = "#6d6d6d"  # grey: not enough data
SUMMARY_COLUMNS = ("check", "value", "threshold", "drifted", "decides", "method", "detail")


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
        page = _evidently_page(reference, images, probabilities, result)
        # Evidently's page has no <title>: a browser tab read "file:///.../2026...-v3.html"
        page = page.replace("<head>", f"<head>{title_tag}", 1)
        page = page.replace("<body>", f"<body>{summary}", 1)
    # unwritable: a full disk or a read-only folder while the page is written is one line
    # naming the report, not an OSError traceback from inside the write
    with unwritable(path), atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _evidently_page(
    reference: Reference,
    images: np.ndarray | pd.DataFrame,
    probabilities: np.ndarray,
    result: DriftResult,
) -> str:
    """Evidently's page for the very rows ``result`` was decided on, with its thresholds."""
    if not len(images) == len(probabilities) == result.rows:
        raise DriftInputError(
            f"images/probabilities: {len(images)} and {len(probabilities)} rows, but the "
            f"result was decided on {result.rows}"
        )
    thresholds = Thresholds(
        p_value=result.threshold_of("prediction"), drift_share=result.threshold_of("input")
    )
    return report_page(reference, scored_window(images, probabilities), thresholds)


def report_title(result: DriftResult, model: str | None, written: datetime) -> str:
    """``Drift report: digits-classifier v3, drift (2026-12-07 14:05 UTC)``."""
    subject = f"{model}, " if model else ""
    return f"Drift report: {subject}{result.decision} ({_utc_minute(written)})"


def _utc_minute(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _summary_html(result: DriftResult, model: str | None, written: datetime) -> str:
    colour = DECISION_COLOURS.get(result.decision, UNDECIDED_COLOUR)
    header = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{name}</th>" for name in SUMMARY_COLUMNS
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

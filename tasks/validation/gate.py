"""The data gate: Great Expectations suites run on per-sample profiles; bad data never passes.

The suites live in ``gx/`` as data, reviewed like code; thresholds come from ``params.yaml``
(``validate:``) and the dataset's ``meta.json`` as suite parameters.

- ``raw_samples`` gates ``data/raw``: the validate stage writes ``data/validated`` only if it
  passes, and ``preprocess`` reads only ``data/validated``.
- ``processed_splits`` gates the split (no image in two of train/val/test): ``preprocess``
  writes ``data/processed`` only if it passes (:func:`validate_splits`).

A failing batch is copied to ``data/quarantine/<time>-<suite>/`` with the validation result
beside it; Data Docs are rebuilt under ``reports/data_docs/`` on every run the suites run.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset, read_json, write_json, write_split_files
from tasks.core.paths import GX_DIR, QUARANTINE_DIR, REPORTS_DIR
from tasks.core.tracking import RunTracker
from tasks.validation.profiles import profile_splits

log = logging.getLogger("mlcycle.validate")

RAW_SUITE = "raw_samples"
PROCESSED_SUITE = "processed_splits"
RAW_REPORT = REPORTS_DIR / "validation_raw.json"
PROCESSED_REPORT = REPORTS_DIR / "validation_processed.json"
METRIC_OF_SUITE = {RAW_SUITE: "validation_success", PROCESSED_SUITE: "split_validation_success"}


class DataValidationFailed(MlcycleError):
    """The data does not meet its expectations; the batch has been quarantined."""


@dataclass(frozen=True)
class ValidationPlaces:
    """Where validation reads its suites and writes its reports, Data Docs and quarantine.

    Data Docs go where ``gx/great_expectations.yml`` says: ``reports/data_docs`` beside it.
    """

    gx_dir: Path = GX_DIR
    reports_dir: Path = REPORTS_DIR
    quarantine_dir: Path = QUARANTINE_DIR

    @property
    def data_docs(self) -> Path:
        return self.reports_dir / "data_docs" / "index.html"

    @property
    def raw_report(self) -> Path:
        """The ``raw_samples`` verdict the validate stage writes."""
        return self.reports_dir / RAW_REPORT.name

    @property
    def processed_report(self) -> Path:
        """The ``processed_splits`` verdict the preprocess stage writes."""
        return self.reports_dir / PROCESSED_REPORT.name


REPOSITORY_PLACES = ValidationPlaces()


@dataclass(frozen=True)
class Outcome:
    """One expectation's verdict, in words a person reads."""

    expectation: str
    description: str
    column: str | None
    success: bool
    observed: str
    expected: str

    def line(self) -> str:
        where = f"({self.column})" if self.column else ""
        return (
            f"{self.expectation}{where}: {self.description}; observed {self.observed}; "
            f"expected {self.expected}"
        )


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    success: bool
    rows: int
    outcomes: tuple[Outcome, ...]
    checked_by_gx: bool = True  # False when the data could not even be profiled

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.success)

    def to_json(self) -> dict[str, Any]:
        """Deterministic for the same data (no run times): a DVC output."""
        return {
            "suite": self.suite,
            "success": self.success,
            "rows": self.rows,
            "expectations": len(self.outcomes),
            "failed": len(self.failures),
            "results": [vars(outcome) for outcome in self.outcomes],
        }

    def summary_lines(self) -> list[str]:
        head = (
            f"{self.suite}: {len(self.failures)} of {len(self.outcomes)} expectations failed "
            f"on {self.rows} rows"
        )
        return [head, *(f"  - {outcome.line()}" for outcome in self.failures)]


def run_suite(
    suite: str, frame: Any, parameters: Mapping[str, Any], gx_dir: Path
) -> tuple[ValidationReport, dict[str, Any]]:
    """Run a checkpoint of the file-based GX project in ``gx_dir`` on a profile table.

    Returns a readable report and GX's full result. Data Docs are rebuilt either way. A GX
    result never raises on failed expectations: callers must check ``report.success``.
    """
    if not (gx_dir / "great_expectations.yml").is_file():
        raise MlcycleError(
            f"{gx_dir}/great_expectations.yml: not found; the GX project "
            "(suites, checkpoints) must be in the repository"
        )
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(gx_dir.resolve().parent))
    try:
        checkpoint = context.checkpoints.get(suite)
    except Exception as error:  # GX raises its own DataContextError family
        raise MlcycleError(f"{gx_dir}: no checkpoint {suite!r} ({error})") from None
    from great_expectations.core.run_identifier import RunIdentifier

    result = checkpoint.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=dict(parameters),
        # the Data Docs index's "Run Name" column (GX writes __none__ without one); it is
        # also a folder name in GX's store: no spaces or colons
        run_id=RunIdentifier(run_name=f"{suite}-{len(frame)}-rows"),
    )
    outcomes = []
    for validation in result.run_results.values():
        for item in validation.results:
            outcomes.append(_outcome(item, frame))
    report = ValidationReport(suite, bool(result.success), len(frame), tuple(outcomes))
    return report, result.describe_dict()


def _outcome(item: Any, frame: Any) -> Outcome:
    config = item.expectation_config
    kwargs = {key: value for key, value in config.kwargs.items() if key not in ("batch_id",)}
    column = kwargs.pop("column", None)
    result = item.result or {}
    if "observed_value" in result:
        observed = _text(result["observed_value"])
    elif "unexpected_count" in result:
        observed = f"{result['unexpected_count']} of {result.get('element_count', len(frame))} "
        observed += "rows unexpected"
        examples = list(
            dict.fromkeys(_text(v) for v in result.get("partial_unexpected_list") or [])
        )
        rows = result.get("partial_unexpected_index_list") or []
        if examples:
            observed += f", e.g. {', '.join(examples)}"
        if rows and not isinstance(rows[0], dict):
            observed += f" at rows {_text(rows)}"
    else:
        observed = "n/a" if item.success else _text(item.exception_info or result)
    expected = ", ".join(f"{key} {_text(value)}" for key, value in sorted(kwargs.items()))
    return Outcome(
        expectation=config.type,
        description=config.description or config.type.replace("_", " "),
        column=column,
        success=bool(item.success),
        observed=observed,
        expected=expected or "(none)",
    )


# A list longer than LIST_SHOWN_UP_TO items is shown by its first LIST_HEAD and its length.
LIST_SHOWN_UP_TO = 12
LIST_HEAD = 10


def _text(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple) and len(value) > LIST_SHOWN_UP_TO:
        head = ", ".join(_text(v) for v in value[:LIST_HEAD])
        return f"[{head}, ... ({len(value)} in all)]"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, np.generic):
        return _text(value.item())
    return str(value)


def raise_failure(
    report: ValidationReport, kept: Path, report_path: Path, places: ValidationPlaces
) -> NoReturn:
    for line in report.summary_lines():
        log.error("validate: %s", line)
    log.error("validate: the failing batch is kept in %s", kept)
    failed = "; ".join(outcome.description for outcome in report.failures)
    details = f"{report_path} and {places.data_docs}" if report.checked_by_gx else report_path
    raise DataValidationFailed(
        f"{report.suite} failed {len(report.failures)} of {len(report.outcomes)} expectations "
        f"({failed}); batch quarantined in {kept}; details in {details}"
    )


@contextmanager
def quarantine(
    report: ValidationReport, full_result: dict[str, Any], places: ValidationPlaces
) -> Iterator[tuple[Path, Path]]:
    """A new ``<UTC time>-<suite>`` folder for a failing batch: yields (folder to fill, its
    final path). The name is claimed first, so no earlier quarantine is ever replaced, and the
    contents appear all at once with the validation results beside them."""
    places.quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for suffix in itertools.count(1):
        target = places.quarantine_dir / f"{stamp}-{report.suite}{f'-{suffix}' * (suffix > 1)}"
        try:
            target.mkdir()  # claims the name; fails if another run holds it
            break
        except FileExistsError:
            continue
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=places.quarantine_dir))
    try:
        yield tmp, target
        (tmp / "validation.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        (tmp / "gx_result.json").write_text(json.dumps(full_result, indent=2, default=str) + "\n")
        os.replace(tmp, target)  # onto the empty folder we claimed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copies, not links: DVC re-copies hard-linked outputs anyway, and a quarantined batch must
    not change when ``data/raw`` does."""
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def validate_splits(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]],
    hashes: np.ndarray,
    info: Mapping[str, Any],
    places: ValidationPlaces = REPOSITORY_PLACES,
) -> ValidationReport:
    """Check a train/val/test split before it is written, and write the verdict to
    ``places.processed_report``; a failing split is quarantined (DataValidationFailed).

    ``hashes[row]`` is the content hash of the processed image of ``data/raw`` row ``row``.
    """
    frame = profile_splits(splits, hashes)
    parameters = {"class_ids": list(range(len(info["class_names"])))}
    report, full_result = run_suite(PROCESSED_SUITE, frame, parameters, places.gx_dir)
    report_path = places.processed_report
    write_json(report_path, report.to_json())
    if not report.success:
        with quarantine(report, full_result, places) as (folder, kept):
            write_split_files(splits, folder, info)
        raise_failure(report, kept, report_path, places)
    log.info(
        "validate: split of %d samples passed %d expectations", report.rows, len(report.outcomes)
    )
    return report


@contextmanager
def recording_validation(tracker: RunTracker | None, report_path: Path) -> Iterator[None]:
    """Log the validation report the block writes to ``report_path`` into ``tracker``'s run,
    pass or fail: the stages write it before they raise DataValidationFailed, and any other
    error leaves no new report to log. Without a tracker (no run to join) nothing is logged."""
    try:
        yield
    except DataValidationFailed:
        if tracker is not None:
            record_validation(tracker, report_path)
        raise
    if tracker is not None:
        record_validation(tracker, report_path)


def record_validation(tracker: RunTracker, report_path: Path) -> None:
    """Log a validation report to MLflow: the file, and 1/0 as ``validation_success`` (raw
    data) or ``split_validation_success`` (the split)."""
    report = read_json(report_path)
    tracker.log_metrics({METRIC_OF_SUITE[report["suite"]]: float(report["success"])})
    tracker.log_artifact(report_path, "validation")


def current_reports(reports_dir: Path = REPORTS_DIR) -> list[Path]:
    """The validation reports that describe the data as it is now: the split's report only if
    it is not older than the raw data's (a failed validate leaves the last split's behind)."""
    raw, split = reports_dir / RAW_REPORT.name, reports_dir / PROCESSED_REPORT.name
    if not raw.is_file():
        return []
    if split.is_file() and split.stat().st_mtime >= raw.stat().st_mtime:
        return [raw, split]
    return [raw]


def record_validations(
    tracker: RunTracker, reports_dir: Path = REPORTS_DIR, skip_metrics: frozenset[str] = frozenset()
) -> None:
    """Record each current validation report whose metric is not in ``skip_metrics``."""
    for path in current_reports(reports_dir):
        if METRIC_OF_SUITE[read_json(path)["suite"]] not in skip_metrics:
            record_validation(tracker, path)


def validation_markdown(places: ValidationPlaces = REPOSITORY_PLACES) -> str:
    """The Prefect artifact: each suite's verdict, its failures, and where the Data Docs are."""
    lines = ["## Data validation", ""]
    for path in current_reports(places.reports_dir):
        report = read_json(path)
        verdict = (
            f"passed {report['expectations']}"
            if report["success"]
            else f"FAILED {report['failed']}"
        )
        lines.append(
            f"- **{report['suite']}**: {verdict} of {report['expectations']} expectations on "
            f"{report['rows']} rows"
        )
        for outcome in report["results"]:
            if not outcome["success"]:
                lines.append(f"  - {Outcome(**outcome).line()}")
    docs = places.data_docs.resolve()
    # A file:// link: the Data Docs are local files; the path shown can be pasted as well
    # (browsers may refuse to follow a file:// link from a page served over http).
    lines += ["", f"Data Docs: [{docs}]({docs.as_uri()})"]
    return "\n".join(lines)

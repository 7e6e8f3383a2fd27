"""validate: Great Expectations gates on the data; bad data never reaches training.

Images are not tables, so each sample is profiled into one row (label, shape, dtype, pixel
range, mean, std, non-finite count, blank flag, content hash, class counts ...) and the profile
is checked by expectation suites kept in ``gx/`` as data, reviewed like code. Thresholds come
from ``params.yaml`` (``validate:``) and the dataset's ``meta.json`` as suite parameters.

- ``raw_samples`` gates ``data/raw``: the validate stage writes ``data/validated`` only if it
  passes, and ``preprocess`` reads only ``data/validated``.
- ``processed_splits`` gates the split (no image in two of train/val/test): ``preprocess``
  writes ``data/processed`` only if it passes.

A failing batch is copied to ``data/quarantine/<time>-<suite>/`` with the validation result
beside it; Data Docs are rebuilt under ``reports/data_docs/`` on every run the suites run.
"""

from __future__ import annotations

import hashlib
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
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.artifacts import (
    ImageDataset,
    atomic_directory,
    read_json,
    write_json,
    write_split_files,
)
from tasks.config import (
    RAW_DIR,
    REPORTS_DIR,
    VALIDATED_DIR,
    MlcycleError,
    ValidateParams,
    describe_validation_error,
    load_params,
    retry_unless_user_error,
    stage_main,
)
from tasks.tracking import RunTracker, joined_flow_run

log = logging.getLogger("mlcycle.validate")

GX_DIR = Path("gx")
QUARANTINE_DIR = Path("data/quarantine")
RAW_SUITE = "raw_samples"
PROCESSED_SUITE = "processed_splits"
RAW_REPORT = REPORTS_DIR / "validation_raw.json"
PROCESSED_REPORT = REPORTS_DIR / "validation_processed.json"
METRIC_OF_SUITE = {RAW_SUITE: "validation_success", PROCESSED_SUITE: "split_validation_success"}
RAW_FILES = ("images.npy", "labels.npy", "meta.json")
PROFILE_CHUNK = 16384  # images per profiling chunk: bounds the temporary arrays to ~50 MB


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


# --- profiles ------------------------------------------------------------------------------


def content_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit BLAKE2b hash of each image's bytes, as int64; chunked to bound memory. The
    only per-image Python loop of validation."""
    count = len(images)
    flat = images.reshape(count, int(np.prod(images.shape[1:])))
    hashes = np.empty(count, dtype=np.int64)
    blake2b = hashlib.blake2b
    for start in range(0, count, PROFILE_CHUNK):
        rows = np.ascontiguousarray(flat[start : start + PROFILE_CHUNK])
        digests = b"".join([blake2b(row, digest_size=8).digest() for row in rows])
        hashes[start : start + len(rows)] = np.frombuffer(digests, dtype=np.int64)
    return hashes


def profile_images(
    images: np.ndarray, labels: np.ndarray, declared_class_counts: np.ndarray | None = None
) -> Any:
    """One row per sample: the table the ``raw_samples`` suite checks. Vectorised in chunks.

    ``declared_class_counts[k]`` is what meta.json says class ``k`` holds; labels outside it
    get NaN there (and fail the class-set expectation anyway).
    """
    import pandas as pd

    count = len(images)
    height, width, channels = images.shape[1:]
    pixels = int(np.prod(images.shape[1:]))
    flat = images.reshape(count, pixels)
    lowest, highest, mean, std = (np.empty(count) for _ in range(4))
    nonfinite = np.zeros(count, dtype=np.int64)
    integer = images.dtype.kind in "iub"
    for start in range(0, count, PROFILE_CHUNK):
        chunk = np.asarray(flat[start : start + PROFILE_CHUNK])
        part = slice(start, start + len(chunk))
        if chunk.size == 0:  # zero-sized images: nothing to summarise
            lowest[part] = highest[part] = mean[part] = std[part] = np.nan
            continue
        lowest[part] = chunk.min(axis=1)
        highest[part] = chunk.max(axis=1)
        if images.dtype == np.uint8:  # exact integer sums: fast and no rounding
            total = chunk.sum(axis=1, dtype=np.int64)
            wide = chunk.astype(np.uint16)
            squares = (wide * wide).sum(axis=1, dtype=np.int64)
        else:
            values = chunk.astype(np.float64)
            if not integer:
                finite = np.isfinite(values)
                nonfinite[part] = pixels - finite.sum(axis=1)
                values = np.where(finite, values, 0.0)
            total = values.sum(axis=1)
            squares = np.square(values).sum(axis=1)
        mean[part] = total / pixels
        std[part] = np.sqrt(np.maximum(squares / pixels - np.square(total / pixels), 0.0))
    frame = pd.DataFrame(
        {
            "label": labels,
            "height": np.full(count, height, dtype=np.int64),
            "width": np.full(count, width, dtype=np.int64),
            "channels": np.full(count, channels, dtype=np.int64),
            "dtype": pd.Categorical.from_codes(np.zeros(count, dtype=np.int8), [str(images.dtype)]),
            "min": lowest,
            "max": highest,
            "mean": mean,
            "std": std,
            "nonfinite": nonfinite,
            "blank": (lowest == highest).astype(np.int64),
            "hash": content_hashes(images),
        }
    )
    frame["conflicting_label"] = (
        frame.groupby("hash", sort=False)["label"].transform("nunique") > 1
    ).astype(np.int64)
    frame["class_count"] = frame.groupby("label", sort=False, dropna=False)["label"].transform(
        "size"
    )
    frame["class_share"] = frame["class_count"] / max(count, 1)
    frame["declared_class_count"] = _declared_counts(labels, declared_class_counts)
    return frame


def _declared_counts(labels: np.ndarray, declared: np.ndarray | None) -> np.ndarray:
    result = np.full(len(labels), np.nan)
    if declared is None or labels.dtype.kind not in "iu":
        return result
    inside = (labels >= 0) & (labels < len(declared))
    result[inside] = declared[labels[inside]]
    return result


def profile_splits(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]], hashes: np.ndarray
) -> Any:
    """One row per processed sample, for ``processed_splits``; its index is the sample's row in
    ``data/raw``, and ``hashes[row]`` the hash of its processed image."""
    import pandas as pd

    frame = pd.concat(
        [
            pd.DataFrame({"split": name, "label": dataset.labels, "hash": hashes[rows]}, index=rows)
            for name, (dataset, rows) in splits.items()
        ]
    )
    frame["hash_splits"] = frame.groupby("hash", sort=False)["split"].transform("nunique")
    return frame


# --- running the suites --------------------------------------------------------------------


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
    result = checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters)
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


def _text(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple) and len(value) > 12:
        return "[" + ", ".join(_text(v) for v in value[:10]) + f", ... ({len(value)} in all)]"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, np.generic):
        return _text(value.item())
    return str(value)


# --- the raw-data gate ---------------------------------------------------------------------

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
Count = Annotated[int, Field(strict=True, ge=0)]


class RawMeta(BaseModel):
    """What ``data/raw/meta.json`` must declare: the canonical format's facts."""

    model_config = ConfigDict(frozen=True, extra="allow")  # `source` and future facts

    class_names: Annotated[list[str], Field(min_length=1)]
    image_shape: Annotated[tuple[PositiveInt, PositiveInt, PositiveInt], Field(strict=False)]
    dtype: Literal["uint8"]  # the pipeline's canonical pixel type
    num_samples: Count
    class_counts: dict[str, Count]


@dataclass(frozen=True)
class RawBatch:
    images: np.ndarray
    labels: np.ndarray
    meta: RawMeta


def load_raw_batch(raw_dir: Path) -> RawBatch:
    """``data/raw`` as it is on disk, assuming nothing beyond what can be profiled."""
    for name in RAW_FILES:
        if not (raw_dir / name).is_file():
            raise DataValidationFailed(f"{raw_dir / name}: not found; run the collect stage first")
    try:
        meta = RawMeta.model_validate(read_json(raw_dir / "meta.json"))
    except ValidationError as error:
        origin = str(raw_dir / "meta.json")
        raise DataValidationFailed(describe_validation_error(error, origin)) from None
    except MlcycleError as error:  # unreadable JSON
        raise DataValidationFailed(str(error)) from None
    try:
        images = np.load(raw_dir / "images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(raw_dir / "labels.npy", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataValidationFailed(f"{raw_dir}: unreadable array ({error})") from None
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        if array.dtype.kind not in "biuf":
            raise DataValidationFailed(
                f"{raw_dir / name}: dtype {array.dtype} is not numeric; expected uint8 images "
                "and int64 labels"
            )
    if images.ndim != 4:
        raise DataValidationFailed(
            f"{raw_dir / 'images.npy'}: shape {images.shape}; expected (N, height, width, channels)"
        )
    if labels.shape != (len(images),):
        raise DataValidationFailed(
            f"{raw_dir / 'labels.npy'}: shape {labels.shape}; expected ({len(images)},), one "
            "label per image"
        )
    return RawBatch(images, labels, meta)


def raw_parameters(meta: RawMeta, params: ValidateParams) -> dict[str, Any]:
    """Suite parameters: the dataset's own declarations plus the thresholds of params.yaml."""
    height, width, channels = meta.image_shape
    info = np.iinfo(np.dtype(meta.dtype))
    return {
        "class_ids": list(range(len(meta.class_names))),
        "height": height,
        "width": width,
        "channels": channels,
        "dtypes": [meta.dtype],
        "pixel_min": int(info.min),
        "pixel_max": int(info.max),
        "num_samples": meta.num_samples,
        **params.model_dump(),
    }


def declared_class_counts(meta: RawMeta) -> np.ndarray:
    return np.array([meta.class_counts.get(name, -1) for name in meta.class_names])


def run_validate(
    params: ValidateParams,
    raw_dir: Path = RAW_DIR,
    validated_dir: Path = VALIDATED_DIR,
    places: ValidationPlaces = REPOSITORY_PLACES,
    tracker: RunTracker | None = None,
) -> ValidationReport:
    """Check ``raw_dir``; on success publish a copy as ``validated_dir``, else quarantine it.

    Any earlier ``validated_dir`` is removed first: after a failure nothing validated remains
    for preprocess to read.
    """
    started = time.perf_counter()
    shutil.rmtree(validated_dir, ignore_errors=True)
    report_path = places.reports_dir / RAW_REPORT.name
    try:
        batch = load_raw_batch(raw_dir)
        frame = profile_images(batch.images, batch.labels, declared_class_counts(batch.meta))
    except DataValidationFailed as error:
        unreadable = Outcome(
            expectation="readable_dataset",
            description=str(error),
            column=None,
            success=False,
            observed="a dataset that cannot be profiled",
            expected="images.npy (N, H, W, C) uint8, labels.npy (N,) and meta.json",
        )
        report = ValidationReport(RAW_SUITE, False, 0, (unreadable,), checked_by_gx=False)
        _fail(report, {"error": str(error)}, raw_dir, report_path, places, tracker)
    parameters = raw_parameters(batch.meta, params)
    report, full_result = run_suite(RAW_SUITE, frame, parameters, places.gx_dir)
    if not report.success:
        _fail(report, full_result, raw_dir, report_path, places, tracker)
    write_json(report_path, report.to_json())
    if tracker is not None:
        record_validation(tracker, report_path)
    with atomic_directory(validated_dir) as tmp:
        copy_files(raw_dir, tmp, RAW_FILES)
    log.info(
        "validate: %d samples passed %d expectations in %.1fs -> %s (Data Docs: %s)",
        report.rows,
        len(report.outcomes),
        time.perf_counter() - started,
        validated_dir,
        places.data_docs,
    )
    return report


def _fail(
    report: ValidationReport,
    full_result: dict[str, Any],
    batch_dir: Path,
    report_path: Path,
    places: ValidationPlaces,
    tracker: RunTracker | None,
) -> NoReturn:
    write_json(report_path, report.to_json())
    if tracker is not None:
        record_validation(tracker, report_path)
    with quarantine(report, full_result, places) as (folder, kept):
        if batch_dir.is_dir():
            copy_files(batch_dir, folder, tuple(p.name for p in sorted(batch_dir.iterdir())))
    raise_failure(report, kept, report_path, places)


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


# --- the split gate (called by preprocess) -------------------------------------------------


def validate_splits(
    splits: Mapping[str, tuple[ImageDataset, np.ndarray]],
    hashes: np.ndarray,
    info: Mapping[str, Any],
    places: ValidationPlaces = REPOSITORY_PLACES,
    tracker: RunTracker | None = None,
) -> ValidationReport:
    """Check a train/val/test split before it is written; a failing split is quarantined.

    ``hashes[row]`` is the content hash of the processed image of ``data/raw`` row ``row``.
    """
    frame = profile_splits(splits, hashes)
    parameters = {"class_ids": list(range(len(info["class_names"])))}
    report, full_result = run_suite(PROCESSED_SUITE, frame, parameters, places.gx_dir)
    report_path = places.reports_dir / PROCESSED_REPORT.name
    write_json(report_path, report.to_json())
    if tracker is not None:
        record_validation(tracker, report_path)
    if not report.success:
        with quarantine(report, full_result, places) as (folder, kept):
            write_split_files(splits, folder, info)
        raise_failure(report, kept, report_path, places)
    log.info(
        "validate: split of %d samples passed %d expectations", report.rows, len(report.outcomes)
    )
    return report


# --- records -------------------------------------------------------------------------------


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
        verdict = "passed" if report["success"] else f"FAILED {report['failed']}"
        lines.append(
            f"- **{report['suite']}**: {verdict} of {report['expectations']} expectations on "
            f"{report['rows']} rows"
        )
        for outcome in report["results"]:
            if not outcome["success"]:
                lines.append(f"  - {Outcome(**outcome).line()}")
    lines += ["", f"Data Docs: `{places.data_docs.resolve()}`"]
    return "\n".join(lines)


validate_task = task(name="validate", retry_condition_fn=retry_unless_user_error)(run_validate)


def main() -> None:
    params = load_params()
    # Under the flow, log into its MLflow run (pass or fail); a plain `dvc repro` has no run
    # yet: the train stage records the validation reports in the run it opens.
    with joined_flow_run(params) as tracker:
        run_validate(params.validate, tracker=tracker)


if __name__ == "__main__":
    stage_main(main)

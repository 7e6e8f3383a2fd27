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

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.core.config import ValidateParams, describe_validation_error, load_params
from tasks.core.console import stage_main
from tasks.core.errors import MlcycleError
from tasks.core.files import (
    GROUPS_FILE,
    atomic_directory,
    read_json,
    read_raw_groups,
    write_json,
)
from tasks.core.paths import RAW_DIR, VALIDATED_DIR
from tasks.core.stage_run import WithoutFlow, stage_run
from tasks.validation.gate import (
    RAW_SUITE,
    REPOSITORY_PLACES,
    DataValidationFailed,
    Outcome,
    ValidationPlaces,
    ValidationReport,
    copy_files,
    quarantine,
    raise_failure,
    recording_validation,
    run_suite,
)
from tasks.validation.profiles import profile_images

log = logging.getLogger("mlcycle.validate")


RAW_FILES = ("images.npy", "labels.npy", "meta.json")


# Published with the rest when present: which images derive from one original (collect's
# augment_to), for preprocess to keep in one split.
OPTIONAL_RAW_FILES = (GROUPS_FILE,)


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
    check_groups(raw_dir, meta, len(images))
    return RawBatch(images, labels, meta)


def check_groups(raw_dir: Path, meta: RawMeta, samples: int) -> None:
    """An optional ``groups.npy`` must give each image a group, and be there if meta.json
    declares it: without it, preprocess would split copies of one digit across splits."""
    declared = (meta.model_extra or {}).get("groups")
    if declared is not None and not (raw_dir / GROUPS_FILE).is_file():
        raise DataValidationFailed(
            f"{raw_dir / GROUPS_FILE}: not found, but {raw_dir / 'meta.json'} declares groups "
            f"({declared}); run the collect stage again"
        )
    try:
        read_raw_groups(raw_dir, samples)
    except MlcycleError as error:
        raise DataValidationFailed(str(error)) from None


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
) -> ValidationReport:
    """Check ``raw_dir`` and write the verdict to ``places.raw_report``; on success publish a
    copy as ``validated_dir``, else quarantine it (DataValidationFailed).

    Any earlier ``validated_dir`` is removed first: after a failure nothing validated remains
    for preprocess to read.
    """
    started = time.perf_counter()
    shutil.rmtree(validated_dir, ignore_errors=True)
    report_path = places.raw_report
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
            expected="images.npy (N, H, W, C) uint8, labels.npy (N,) and meta.json "
            "(groups.npy (N,) optional)",
        )
        report = ValidationReport(RAW_SUITE, False, 0, (unreadable,), checked_by_gx=False)
        _fail(report, {"error": str(error)}, raw_dir, report_path, places)
    parameters = raw_parameters(batch.meta, params)
    report, full_result = run_suite(RAW_SUITE, frame, parameters, places.gx_dir)
    if not report.success:
        _fail(report, full_result, raw_dir, report_path, places)
    write_json(report_path, report.to_json())
    with atomic_directory(validated_dir) as tmp:
        copy_files(raw_dir, tmp, RAW_FILES + OPTIONAL_RAW_FILES)
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
) -> NoReturn:
    """Write the failing verdict, quarantine the batch beside it, raise DataValidationFailed."""
    write_json(report_path, report.to_json())
    with quarantine(report, full_result, places) as (folder, kept):
        if batch_dir.is_dir():
            copy_files(batch_dir, folder, tuple(p.name for p in sorted(batch_dir.iterdir())))
    raise_failure(report, kept, report_path, places)


def main() -> None:
    params = load_params()
    # Under the flow, log the report it wrote into the flow's MLflow run (pass or fail); a plain
    # `dvc repro` has no run yet: the train stage records the validation reports in the run it
    # opens.
    with (
        stage_run(params, "validate", WithoutFlow.NOTHING) as tracker,
        recording_validation(tracker, REPOSITORY_PLACES.raw_report),
    ):
        run_validate(params.validate)


if __name__ == "__main__":
    stage_main(main)

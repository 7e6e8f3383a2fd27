"""The Great Expectations gates, on small generated data, against a copy of the repo's gx/."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import PreprocessParams, ValidateParams
from tasks.core.files import ImageDataset, write_raw_dataset
from tasks.stages.preprocess import run_preprocess
from tasks.stages.validate import RawMeta, raw_parameters, run_validate
from tasks.validation.gate import (
    PROCESSED_SUITE,
    RAW_SUITE,
    DataValidationFailed,
    current_reports,
    record_validations,
    recording_validation,
    validate_splits,
    validation_markdown,
)
from tasks.validation.profiles import content_hashes, profile_images
from tests.helpers import REPO_ROOT, synthetic_dataset

PARAMS = ValidateParams(min_rows=10, max_rows=10_000, min_class_share=0.05, max_blank_share=0.1)
PREPROCESS = PreprocessParams(
    seed=0, val_fraction=0.2, test_fraction=0.2, image_size=None, channels=None
)


def raw_batch(folder: Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> Path:
    """A ``data/raw`` folder written byte for byte, bypassing collect's own checks, as a
    broken export or a hand-edited file would leave it."""
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def clean() -> tuple[np.ndarray, np.ndarray, dict]:
    data = synthetic_dataset(per_class=12, num_classes=3)
    meta = {
        "class_names": list(data.class_names),
        "image_shape": [8, 8, 1],
        "dtype": "uint8",
        "num_samples": 36,
        "class_counts": dict.fromkeys(data.class_names, 12),
    }
    return data.images.copy(), data.labels.copy(), meta


def shrink_class_2(labels: np.ndarray, meta: dict, to: int) -> np.ndarray:
    """Rows keeping only ``to`` samples of class 2, with meta.json's counts kept truthful."""
    keep = np.concatenate([np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:to]])
    meta["num_samples"], meta["class_counts"]["class_2"] = len(keep), to
    return keep


def expect_failure(tmp_path, places, images, labels, meta, description, params=PARAMS):
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    with pytest.raises(DataValidationFailed) as caught:
        run_validate(params, raw, tmp_path / "validated", places)
    assert description in str(caught.value)
    assert not (tmp_path / "validated").exists()  # nothing for preprocess to read
    kept = list(places.quarantine_dir.iterdir())
    assert len(kept) == 1 and str(kept[0]) in str(caught.value)
    assert {p.name for p in kept[0].iterdir()} == {
        "images.npy",
        "labels.npy",
        "meta.json",
        "validation.json",
        "gx_result.json",
    }
    np.testing.assert_array_equal(np.load(kept[0] / "images.npy"), images)
    report = json.loads((kept[0] / "validation.json").read_text())
    assert report["success"] is False
    assert description in [r["description"] for r in report["results"] if not r["success"]]
    assert places.data_docs.is_file()  # Data Docs are built on failure too
    return str(caught.value)


def test_a_clean_dataset_passes_and_is_published_as_validated(tmp_path, places, capfd):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    report = run_validate(PARAMS, raw, tmp_path / "validated", places)
    assert report.success and report.rows == 36 and not report.failures
    for name in ("images.npy", "labels.npy", "meta.json"):
        assert (tmp_path / "validated" / name).read_bytes() == (raw / name).read_bytes()
    saved = json.loads((places.reports_dir / "validation_raw.json").read_text())
    assert saved["success"] is True and saved["failed"] == 0
    assert places.data_docs.is_file()
    assert not places.quarantine_dir.exists()
    assert "Calculating Metrics" not in capfd.readouterr().err  # GX's progress bars stay off


def with_a_nan_pixel(images, labels, meta):
    """One NaN pixel, in float32 images where meta.json declares uint8."""
    images = images.astype(np.float32)
    images[4, 2, 3, 0] = np.nan
    return images, labels, meta


def with_an_out_of_range_pixel(images, labels, meta):
    """One pixel of 300, in int16 images where meta.json declares uint8."""
    images = images.astype(np.int16)
    images[7, 0, 0, 0] = 300
    return images, labels, meta


def with_a_missing_class(images, labels, meta):
    """meta.json declares a fourth class that no sample carries."""
    meta["class_names"].append("class_3")
    meta["class_counts"]["class_3"] = 0
    return images, labels, meta


def with_wider_images(images, labels, meta):
    """Images 9 pixels wide where meta.json declares 8."""
    wider = np.zeros((len(images), 8, 9, 1), np.uint8)
    wider[..., :8, :] = images
    return wider, labels, meta


def with_counts_that_differ_from_meta_json(images, labels, meta):
    """meta.json claims 40 samples, 16 of them class_1; the arrays hold 36, 12 of class_1."""
    meta["num_samples"] = 40
    meta["class_counts"]["class_1"] = 16
    return images, labels, meta


def with_2_samples_of_class_2(images, labels, meta):
    """class_2 keeps 2 samples: too few for one per train/val/test split."""
    keep = shrink_class_2(labels, meta, to=2)
    return images[keep], labels[keep], meta


def with_3_samples_of_class_2(images, labels, meta):
    """class_2 keeps 3 samples: enough to split, but 3 of 27 is 11% of the rows."""
    keep = shrink_class_2(labels, meta, to=3)
    return images[keep], labels[keep], meta


def unchanged(images, labels, meta):
    """The clean batch, for the cases where the thresholds are what it fails."""
    return images, labels, meta


def with_identical_images_of_different_labels(images, labels, meta):
    """A copy of image 0 at a row whose label is another class."""
    twin = np.flatnonzero(labels != labels[0])[0]
    images[twin] = images[0]
    return images, labels, meta


def with_too_many_blank_images(images, labels, meta):
    """6 of 36 images all zero: more than validate.max_blank_share of 10%."""
    images[:6] = 0
    return images, labels, meta


def with_no_samples(images, labels, meta):
    """No rows at all, with meta.json's counts kept truthful."""
    meta["num_samples"], meta["class_counts"] = 0, dict.fromkeys(meta["class_names"], 0)
    return np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, np.int64), meta


@pytest.mark.parametrize(
    ("break_batch", "thresholds", "description", "also_named"),
    [
        pytest.param(
            with_a_nan_pixel,
            {},
            "no image has a NaN or infinite pixel",
            ["pixel dtype meta.json declares"],  # float32, not the declared uint8
            id="nan-pixel",
        ),
        pytest.param(
            with_an_out_of_range_pixel,
            {},
            "the brightest pixel of every image is within the dtype's range",
            [],
            id="out-of-range-pixel",
        ),
        pytest.param(
            with_a_missing_class,
            {},
            "every class declared in meta.json has samples",
            [],
            id="missing-class",
        ),
        pytest.param(
            with_wider_images,
            {},
            "every image has the width meta.json declares",
            [],
            id="shape-other-than-declared",
        ),
        pytest.param(
            with_counts_that_differ_from_meta_json,
            {},
            "the sample count is the num_samples meta.json declares",
            ["every class has as many samples as meta.json's class_counts declares"],
            id="counts-differ-from-meta-json",
        ),
        pytest.param(
            with_2_samples_of_class_2,
            {"min_class_share": 0.01},  # the share alone is fine
            "every class has at least 3 samples, one per train/val/test split",
            [],
            id="class-too-small-to-split",
        ),
        pytest.param(
            unchanged,
            {"min_rows": 50},
            "the sample count is within validate.min_rows..validate.max_rows",
            [],
            id="too-few-rows",
        ),
        pytest.param(
            with_identical_images_of_different_labels,
            {},
            "no two identical images carry different labels",
            [],
            id="identical-images-different-labels",
        ),
        pytest.param(
            with_too_many_blank_images,
            {},
            "the share of blank (all-constant) images is at most validate.max_blank_share",
            [],
            id="too-many-blank-images",
        ),
        pytest.param(
            with_3_samples_of_class_2,
            {"min_class_share": 0.2},  # 3 of 27 is 11%
            "the rarest class is at least validate.min_class_share of the samples",
            [],
            id="too-rare-a-class",
        ),
        pytest.param(
            with_no_samples,
            {},
            "the sample count is within validate.min_rows..validate.max_rows",
            ["every class declared in meta.json has samples"],
            id="empty-dataset",
        ),
    ],
)
def test_a_broken_batch_is_quarantined_naming_what_failed(
    tmp_path, places, break_batch, thresholds, description, also_named
):
    """A batch with one defect fails the raw suite: the error and validation.json name the
    failed expectation (and any others the defect also breaks), the batch is quarantined and
    nothing is published as validated."""
    images, labels, meta = break_batch(*clean())
    params = PARAMS.model_copy(update=thresholds)
    message = expect_failure(tmp_path, places, images, labels, meta, description, params)
    for other in also_named:
        assert other in message


def test_a_label_outside_the_class_set(tmp_path, places):
    images, labels, meta = clean()
    labels[5] = 9
    message = expect_failure(
        tmp_path, places, images, labels, meta, "every label is a class declared in meta.json"
    )
    report = json.loads((places.reports_dir / "validation_raw.json").read_text())
    failed = next(r for r in report["results"] if r["column"] == "label" and not r["success"])
    assert failed["observed"] == "1 of 36 rows unexpected, e.g. 9 at rows [5]"
    assert "value_set [0, 1, 2]" in failed["expected"]
    assert "raw_samples failed" in message


def test_an_unreadable_batch_is_quarantined_with_the_reason(tmp_path, places):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels[:-1], meta)
    with pytest.raises(DataValidationFailed, match=r"labels\.npy: shape \(35,\); expected \(36,\)"):
        run_validate(PARAMS, raw, tmp_path / "validated", places)
    (kept,) = places.quarantine_dir.iterdir()
    assert (kept / "images.npy").is_file() and (kept / "validation.json").is_file()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.update(class_names=3),
            r"meta\.json: class_names: Input should be a valid list",
        ),
        (
            lambda m: m.update(image_shape=[4.7, 8, 1]),
            r"image_shape\.0: Input should be a valid integer",
        ),
        (lambda m: m.update(dtype="float32"), r"dtype: Input should be 'uint8' \(got 'float32'\)"),
        (lambda m: m.pop("class_counts"), r"class_counts: missing"),
    ],
)
def test_meta_json_that_breaks_the_format_is_named(tmp_path, places, edit, message):
    images, labels, meta = clean()
    edit(meta)
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    with pytest.raises(DataValidationFailed, match=message):
        run_validate(PARAMS, raw, tmp_path / "validated", places)
    assert len(list(places.quarantine_dir.iterdir())) == 1


def test_meta_json_that_is_not_json(tmp_path, places):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    (raw / "meta.json").write_text("{broken")
    with pytest.raises(DataValidationFailed, match=r"meta\.json: not valid JSON"):
        run_validate(PARAMS, raw, tmp_path / "validated", places)


def test_non_numeric_images(tmp_path, places):
    _, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", np.full((36, 8, 8, 1), "x"), labels, meta)
    with pytest.raises(DataValidationFailed, match=r"images\.npy: dtype <U1 is not numeric"):
        run_validate(PARAMS, raw, tmp_path / "validated", places)


def test_a_failure_removes_an_earlier_validated_copy(tmp_path, places):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    run_validate(PARAMS, raw, tmp_path / "validated", places)
    assert (tmp_path / "validated" / "images.npy").is_file()
    labels[0] = 9
    np.save(raw / "labels.npy", labels)
    with pytest.raises(DataValidationFailed):
        run_validate(PARAMS, raw, tmp_path / "validated", places)
    assert not (tmp_path / "validated").exists()  # nothing stale for preprocess to read


def test_quarantine_keeps_every_failure_and_is_a_snapshot(tmp_path, places):
    images, labels, meta = clean()
    labels[0] = 9
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    for _ in range(3):  # the same second: three folders, none replaced
        with pytest.raises(DataValidationFailed):
            run_validate(PARAMS, raw, tmp_path / "validated", places)
    kept = sorted(places.quarantine_dir.iterdir())
    assert len(kept) == 3 and not [p for p in kept if p.name.startswith(".")]
    np.save(raw / "labels.npy", np.zeros_like(labels))  # raw changes afterwards ...
    assert np.load(kept[0] / "labels.npy")[0] == 9  # ... the kept batch does not


def test_thresholds_are_tuned_in_params_not_python(tmp_path, places):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    assert run_validate(PARAMS, raw, tmp_path / "validated", places).success
    strict = PARAMS.model_copy(update={"min_class_share": 0.5})
    with pytest.raises(DataValidationFailed, match="rarest class"):
        run_validate(strict, raw, tmp_path / "validated", places)


def test_the_report_is_deterministic(tmp_path, places):
    images, labels, meta = clean()
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    run_validate(PARAMS, raw, tmp_path / "a", places)
    first = (places.reports_dir / "validation_raw.json").read_bytes()
    run_validate(PARAMS, raw, tmp_path / "b", places)
    assert (places.reports_dir / "validation_raw.json").read_bytes() == first


# --- the split gate ------------------------------------------------------------------------


def split_of(data: ImageDataset, rows: np.ndarray) -> tuple[ImageDataset, np.ndarray]:
    return ImageDataset(data.images[rows], data.labels[rows], data.class_names), rows


def test_an_image_copied_into_both_train_and_test(places):
    data = synthetic_dataset(per_class=12, num_classes=3)
    images = data.images.copy()
    images[30] = images[0]  # row 30 lands in test, row 0 in train
    data = ImageDataset(images, data.labels, data.class_names)
    splits = {
        "train": split_of(data, np.arange(0, 20)),
        "val": split_of(data, np.arange(20, 28)),
        "test": split_of(data, np.arange(28, 36)),
    }
    info = {"class_names": list(data.class_names)}
    with pytest.raises(
        DataValidationFailed,
        match="no image \\(by content hash\\) is in more than one of train/val/test",
    ):
        validate_splits(splits, content_hashes(images), info, places)
    report = json.loads((places.reports_dir / "validation_processed.json").read_text())
    failed = [r for r in report["results"] if not r["success"]]
    assert [r["column"] for r in failed] == ["hash_splits"]
    assert failed[0]["observed"].startswith("2 of 36 rows unexpected")
    assert re.search(r"rows \[0, 30\]", failed[0]["observed"])  # rows of data/raw
    (kept,) = places.quarantine_dir.iterdir()
    assert {p.name for p in kept.iterdir()} >= {"train.npz", "test.npz", "validation.json"}


def test_preprocess_keeps_identical_images_in_one_split(tmp_path, places):
    data = synthetic_dataset(per_class=12, num_classes=3)
    images = np.concatenate([data.images] * 3)  # every image three times, same label
    labels = np.concatenate([data.labels] * 3)
    write_raw_dataset(
        ImageDataset(images, labels, data.class_names), tmp_path / "validated", source="test"
    )
    run_preprocess(PREPROCESS, tmp_path / "validated", tmp_path / "processed", places)
    hashes = content_hashes(images)
    splits_of_hash: dict[int, set[str]] = {}
    for name in ("train", "val", "test"):
        for row in np.load(tmp_path / "processed" / f"{name}.npz")["indices"]:
            splits_of_hash.setdefault(int(hashes[row]), set()).add(name)
    assert len(splits_of_hash) == 36 and all(len(s) == 1 for s in splits_of_hash.values())


def test_a_failing_split_leaves_no_processed_data(tmp_path, places):
    """The suite is data: tighten it in gx/ (here: allow no image in any split) and the same
    clean split fails, is quarantined, and nothing is written."""
    suite_file = places.gx_dir / "expectations" / f"{PROCESSED_SUITE}.json"
    suite = json.loads(suite_file.read_text())
    for expectation in suite["expectations"]:
        if expectation["kwargs"].get("column") == "hash_splits":
            expectation["kwargs"]["max_value"] = 0
    suite_file.write_text(json.dumps(suite))
    write_raw_dataset(synthetic_dataset(), tmp_path / "validated", source="test")
    with pytest.raises(DataValidationFailed, match="processed_splits failed 1 of 4"):
        run_preprocess(PREPROCESS, tmp_path / "validated", tmp_path / "processed", places)
    assert not (tmp_path / "processed").exists()
    (kept,) = places.quarantine_dir.iterdir()
    assert kept.name.endswith(PROCESSED_SUITE)
    assert {"train.npz", "val.npz", "test.npz", "validation.json"} <= {
        p.name for p in kept.iterdir()
    }


def test_a_clean_split_passes(places, processed_dir):
    report = json.loads((places.reports_dir / "validation_processed.json").read_text())
    assert report["success"] is True and report["suite"] == PROCESSED_SUITE
    assert (processed_dir / "train.npz").is_file()


# --- profiles, suites and records ----------------------------------------------------------


def test_profile_of_known_images():
    images = np.zeros((4, 2, 2, 1), np.uint8)
    images[1] = [[[0], [255]], [[255], [0]]]
    images[2] = images[1]
    images[3] = 7
    frame = profile_images(images, np.array([0, 1, 2, 0]), np.array([2, 1, 5]))
    assert frame["min"].tolist() == [0, 0, 0, 7] and frame["max"].tolist() == [0, 255, 255, 7]
    assert frame["mean"].tolist() == [0, 127.5, 127.5, 7]
    assert frame["std"].tolist() == [0, 127.5, 127.5, 0]
    assert frame["blank"].tolist() == [1, 0, 0, 1]
    assert frame["hash"][1] == frame["hash"][2] != frame["hash"][0]
    assert frame["conflicting_label"].tolist() == [0, 1, 1, 0]  # rows 1, 2: same image, 1 vs 2
    assert frame["class_share"].tolist() == [0.5, 0.25, 0.25, 0.5]
    assert frame["class_count"].tolist() == [2, 1, 1, 2]
    assert frame["declared_class_count"].tolist() == [2, 1, 5, 2]
    assert frame["nonfinite"].tolist() == [0, 0, 0, 0]


def test_float_profiles_count_non_finite_pixels():
    images = np.zeros((2, 2, 2, 1), np.float32)
    images[0, 0, 0, 0] = np.inf
    images[1, 1, 1, 0] = np.nan
    assert profile_images(images, np.array([0, 1]))["nonfinite"].tolist() == [1, 1]


def suite_parameters(name: str) -> set[str]:
    suite = json.loads((REPO_ROOT / "gx" / "expectations" / f"{name}.json").read_text())
    return set(re.findall(r'"\$PARAMETER": "(\w+)"', json.dumps(suite)))


def test_the_suites_ask_only_for_parameters_the_code_supplies():
    meta = RawMeta(
        class_names=["a"],
        image_shape=(1, 1, 1),
        dtype="uint8",
        num_samples=1,
        class_counts={"a": 1},
    )
    supplied = set(raw_parameters(meta, PARAMS))
    assert suite_parameters(RAW_SUITE) <= supplied
    assert suite_parameters(PROCESSED_SUITE) <= {"class_ids"}
    # and every threshold of params.yaml's validate: section is used by the suite
    assert set(PARAMS.model_dump()) <= suite_parameters(RAW_SUITE)


def test_every_expectation_explains_itself():
    for name in (RAW_SUITE, PROCESSED_SUITE):
        suite = json.loads((REPO_ROOT / "gx" / "expectations" / f"{name}.json").read_text())
        assert all(e.get("description") for e in suite["expectations"]), name


def test_records_reach_mlflow_and_prefect_markdown(
    tracking_store, tiny_params, places, processed_dir
):
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run

    (places.reports_dir / "validation_raw.json").write_text(
        json.dumps(
            {
                "suite": RAW_SUITE,
                "success": False,
                "rows": 36,
                "expectations": 2,
                "failed": 1,
                "results": [
                    {
                        "expectation": "expect_x",
                        "description": "labels are fine",
                        "column": "label",
                        "success": False,
                        "observed": "1 of 36 rows",
                        "expected": "value_set [0]",
                    }
                ],
            }
        )
    )
    split_report = places.reports_dir / "validation_processed.json"
    os.utime(split_report, (time.time() + 5, time.time() + 5))  # the split is checked after
    with tracked_run(tiny_params) as run:
        record_validations(run, places.reports_dir)
    logged = MlflowClient().get_run(run.run_id).data.metrics
    assert logged == {"validation_success": 0.0, "split_validation_success": 1.0}
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.run_id, "validation")}
    assert artifacts == {"validation/validation_raw.json", "validation/validation_processed.json"}
    text = validation_markdown(places)
    assert "**raw_samples**: FAILED 1 of 2 expectations" in text
    assert "expect_x(label): labels are fine; observed 1 of 36 rows; expected value_set [0]" in text
    split = json.loads(split_report.read_text())
    assert (
        f"**processed_splits**: passed {split['expectations']} of {split['expectations']} " in text
    )
    docs = places.data_docs.resolve()
    assert f"Data Docs: [{docs}]({docs.as_uri()})" in text  # a link, not code to copy


def test_a_split_report_older_than_the_raw_one_is_stale(places, processed_dir):
    split_report = places.reports_dir / "validation_processed.json"
    raw_report = places.reports_dir / "validation_raw.json"
    raw_report.write_text(
        json.dumps(
            {
                "suite": RAW_SUITE,
                "success": False,
                "rows": 1,
                "expectations": 1,
                "failed": 1,
                "results": [],
            }
        )
    )
    os.utime(split_report, (time.time() - 60, time.time() - 60))
    assert current_reports(places.reports_dir) == [raw_report]
    assert "processed_splits" not in validation_markdown(places)


def test_records_skip_metrics_the_run_already_has(
    tracking_store, tiny_params, places, processed_dir
):
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run

    (places.reports_dir / "validation_raw.json").write_text(
        json.dumps(
            {
                "suite": RAW_SUITE,
                "success": True,
                "rows": 36,
                "expectations": 1,
                "failed": 0,
                "results": [],
            }
        )
    )
    split_report = places.reports_dir / "validation_processed.json"
    os.utime(split_report, (time.time() + 5, time.time() + 5))
    with tracked_run(tiny_params) as run:
        record_validations(run, places.reports_dir, skip_metrics=frozenset({"validation_success"}))
    assert MlflowClient().get_run(run.run_id).data.metrics == {"split_validation_success": 1.0}


@pytest.mark.parametrize("passes", [True, False], ids=["passing", "failing"])
def test_the_stage_logs_the_verdict_it_wrote_pass_or_fail(
    tracking_store, tiny_params, tmp_path, places, passes
):
    """The stages are pure (no tracker): their main logs the report file they wrote."""
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run

    images, labels, meta = clean() if passes else with_a_nan_pixel(*clean())
    raw = raw_batch(tmp_path / "raw", images, labels, meta)
    with tracked_run(tiny_params) as run:
        try:
            with recording_validation(run, places.raw_report):
                run_validate(PARAMS, raw, tmp_path / "validated", places)
        except DataValidationFailed:
            assert not passes
    assert MlflowClient().get_run(run.run_id).data.metrics == {
        "validation_success": 1.0 if passes else 0.0
    }
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.run_id, "validation")}
    assert artifacts == {"validation/validation_raw.json"}


def test_a_stage_that_fails_before_its_verdict_logs_no_earlier_report(
    tracking_store, tiny_params, places, processed_dir
):
    """A split that cannot be made (SplitError) leaves the last run's report on disk: it
    describes other data, so nothing is logged."""
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run
    from tasks.stages.preprocess import SplitError

    assert places.processed_report.is_file()  # the earlier split's verdict
    with (
        tracked_run(tiny_params) as run,
        pytest.raises(SplitError),
        recording_validation(run, places.processed_report),
    ):
        raise SplitError("cannot stratify: class 'a' has 2 distinct sample(s)")
    assert MlflowClient().get_run(run.run_id).data.metrics == {}
    assert MlflowClient().list_artifacts(run.run_id, "validation") == []

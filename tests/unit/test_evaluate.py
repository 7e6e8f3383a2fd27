import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core.errors import MlcycleError
from tasks.core.files import read_split
from tasks.core.model_file import load_model, predict_logits
from tasks.monitoring.reference import REFERENCE_ARTIFACT_DIR, load_reference
from tasks.stages.evaluate import (
    classification_scores,
    record_evaluation,
    run_evaluate,
)
from tasks.stages.train import run_train


@pytest.fixture
def trained(tiny_params, processed_dir, tmp_path):
    model_path = tmp_path / "model.pt"
    run_train(
        tiny_params.train.model_copy(update={"epochs": 6, "lr": 0.01}),
        processed_dir,
        model_path,
        tmp_path / "checkpoints",
        tmp_path / "train-reports",
    )
    return model_path


def test_scores_on_known_predictions():
    actual = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    scores = classification_scores(actual, predicted, ("a", "b", "c"))
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.per_class["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert scores.macro_f1 == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert scores.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_a_class_never_predicted_scores_zero_not_an_error():
    scores = classification_scores(np.array([0, 1]), np.array([0, 0]), ("a", "b"))
    assert scores.per_class["b"]["precision"] == 0.0


def test_evaluation_reports(tiny_params, processed_dir, trained, tmp_path):
    reports = tmp_path / "reports"
    result = run_evaluate(tiny_params.evaluate, trained, processed_dir, reports)
    test, _ = read_split(processed_dir, "test")
    model, _ = load_model(trained)
    expected = (model(torch.from_numpy(test.images)).argmax(1).numpy() == test.labels).mean()
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(expected, abs=1e-6) == result.accuracy
    assert metrics["test_samples"] == len(test.labels)
    assert metrics["baseline"]["model"] == "logistic_regression"
    assert metrics["baseline"]["accuracy"] >= 0.9  # a linear model separates the bands too
    per_class = json.loads((reports / "classification_report.json").read_text())
    assert set(per_class) == set(test.class_names)
    rows = (reports / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == len(test.labels) + 1
    with Image.open(reports / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width >= 300


def test_evaluation_writes_the_monitoring_reference(tiny_params, processed_dir, trained, tmp_path):
    result = run_evaluate(tiny_params.evaluate, trained, processed_dir, tmp_path / "reports")
    assert result.reference_path == tmp_path / "reports" / "monitoring_reference.npz"
    reference = load_reference(result.reference_path)
    train, _ = read_split(processed_dir, "train")
    val, _ = read_split(processed_dir, "val")
    assert len(reference.features) == len(train.labels)  # what the model was trained on ...
    model, _ = load_model(trained)
    answers = torch.softmax(model(torch.from_numpy(val.images)), dim=1).detach().numpy()
    np.testing.assert_array_equal(reference.val_predicted, answers.argmax(1))  # ... how it answered
    np.testing.assert_allclose(reference.val_confidence, answers.max(1), rtol=1e-5)
    assert reference.test_accuracy == result.accuracy
    assert (reference.class_names, reference.image_shape) == (train.class_names, train.image_shape)


def test_the_reference_is_logged_for_the_monitor(
    tracking_store, tiny_params, processed_dir, trained, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tasks.core.tracking import tracked_run

    with tracked_run(tiny_params, run_name="evaluate") as tracker:
        run_evaluate(tiny_params.evaluate, trained, processed_dir, tmp_path / "reports")
        record_evaluation(tracker, tmp_path / "reports")
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(tracker.run_id, REFERENCE_ARTIFACT_DIR)}
    assert logged == {"monitoring/monitoring_reference.npz"}
    assert "evaluation/monitoring_reference.npz" not in {
        a.path for a in client.list_artifacts(tracker.run_id, "evaluation")
    }


def test_evaluation_without_baseline(tiny_params, processed_dir, trained, tmp_path):
    params = tiny_params.evaluate.model_copy(update={"baseline": "none"})
    result = run_evaluate(params, trained, processed_dir, tmp_path / "reports")
    assert result.baseline_accuracy is None
    assert "baseline" not in json.loads((tmp_path / "reports" / "metrics.json").read_text())


def test_a_small_baseline_fits_on_one_blas_thread(
    tiny_params, processed_dir, trained, tmp_path, monkeypatch
):
    """OpenBLAS's threads made the digits' baseline 30x slower on two cores (evaluate.py)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    fit = LogisticRegression.fit
    seen: list[int] = []

    def fit_and_count_threads(self, *args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", fit_and_count_threads)
    with threadpool_limits(2, "blas"):  # what a 2-core machine gives by default
        run_evaluate(tiny_params.evaluate, trained, processed_dir, tmp_path / "reports")
    assert seen and set(seen) == {1}


def test_missing_model_is_named(tiny_params, processed_dir, tmp_path):
    with pytest.raises(MlcycleError, match=r"absent\.pt: not found; run the train stage"):
        run_evaluate(tiny_params.evaluate, tmp_path / "absent.pt", processed_dir, tmp_path)


def test_a_file_that_is_not_a_model_is_named(tiny_params, processed_dir, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"junk")
    with pytest.raises(MlcycleError, match=r"model\.pt: not a model written by the train stage"):
        run_evaluate(tiny_params.evaluate, tmp_path / "model.pt", processed_dir, tmp_path)


def test_logits_in_batches_are_the_whole_batch_logits(trained, processed_dir):
    model = load_model(trained)[0]
    images = torch.from_numpy(read_split(processed_dir, "test")[0].images[:23])
    with torch.no_grad():
        whole = model.eval()(images)
    batched = predict_logits(model, images, batch_size=5)  # 5 batches, the last one of 3
    assert batched.shape == whole.shape
    assert torch.allclose(batched, whole, atol=1e-5)
    with pytest.raises(ValueError, match="no images"):
        predict_logits(model, images[:0])

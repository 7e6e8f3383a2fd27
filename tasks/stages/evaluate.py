"""evaluate: score the trained model on the held-out test split, beside an honest baseline.

Writes ``reports/metrics.json`` (accuracy, macro-F1, the baseline's), the per-class report, the
confusion matrix as a PNG and as DVC plot data, and the monitoring reference (what this model saw
and said, for drift monitoring once it is served). The baseline is a scikit-learn logistic
regression on the same split, so a reader sees whether deep learning earned its keep.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.config import EvaluateParams, load_params
from tasks.core.console import stage_main
from tasks.core.files import ImageDataset, atomic_path, read_json, read_split, write_json
from tasks.core.lineage import TAG_EVALUATED
from tasks.core.model_file import load_model, predict_logits
from tasks.core.paths import MODEL_FILE, PROCESSED_DIR, REPORTS_DIR
from tasks.core.stage_run import WithoutFlow, stage_run
from tasks.core.tracking import RunTracker
from tasks.monitoring.reference import (
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE_NAME,
    reference_from_split,
    save_reference,
)

log = logging.getLogger("mlcycle.evaluate")


METRICS_FILE = REPORTS_DIR / "metrics.json"


CLASS_REPORT_FILE = REPORTS_DIR / "classification_report.json"


CONFUSION_CSV = REPORTS_DIR / "confusion.csv"


CONFUSION_PNG = REPORTS_DIR / "confusion_matrix.png"


MONITORING_REFERENCE = REPORTS_DIR / REFERENCE_FILE_NAME


BASELINE_SEED = 0


# The SVM baseline: an RBF kernel with little regularisation (C=10 fits small images better
# than sklearn's C=1); its iterations are cheaper than logistic regression's, so it gets
# evaluate.baseline_max_iter times this many.
SVM_C = 10.0
SVM_ITERATIONS_PER_ITER = 100

# Below this many pixel values (train rows x pixels) the baseline fits on one BLAS thread.
# Logistic regression's many small products spend longer handing work to OpenBLAS's threads
# than doing it: on the digits (1,257 x 64) two threads took 0.94 s on an idle 2-core machine
# and 2.3 s (7 s inside a pipeline run) on a busy one, one thread 0.03-0.07 s.
BASELINE_ONE_THREAD_BELOW = 2_000_000


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray


@dataclass(frozen=True)
class EvaluateResult:
    accuracy: float
    macro_f1: float
    baseline_accuracy: float | None
    baseline_macro_f1: float | None
    test_samples: int
    metrics_path: Path
    reference_path: Path


def run_evaluate(
    params: EvaluateParams,
    model_path: Path = MODEL_FILE,
    processed_dir: Path = PROCESSED_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> EvaluateResult:
    """Score the model on the test split (and the baseline beside it), write the reports and
    the monitoring reference, and return the scores."""
    model, saved = load_model(model_path)
    test, _ = read_split(processed_dir, "test")
    predicted = predict_logits(model, torch.from_numpy(test.images)).argmax(dim=1).numpy()
    scores = classification_scores(test.labels, predicted, test.class_names)
    baseline = None
    if params.baseline != "none":
        train, info = read_split(processed_dir, "train")
        baseline = fit_baseline(params.baseline, train, test, info, params)
    paths = ReportPaths.under(reports_dir)
    write_json(paths.metrics, metrics_json(scores, baseline, params.baseline, len(test.labels)))
    write_json(paths.per_class, scores.per_class)
    write_confusion_csv(paths.confusion_csv, test.labels, predicted, test.class_names)
    plot_confusion_matrix(
        paths.confusion_png,
        scores,
        test.class_names,
        title=f"{saved.spec.model} on {len(test.labels)} test images",
    )
    save_reference(
        reference_from_split(model_path, processed_dir, scores.accuracy, params.reference_rows),
        paths.monitoring_reference,
    )
    log.info(
        "evaluate: test accuracy %.4f, macro-F1 %.4f (%d images)%s",
        scores.accuracy,
        scores.macro_f1,
        len(test.labels),
        f" | baseline {params.baseline}: accuracy {baseline.accuracy:.4f}, "
        f"macro-F1 {baseline.macro_f1:.4f}"
        if baseline
        else "",
    )
    return EvaluateResult(
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        baseline_accuracy=baseline.accuracy if baseline else None,
        baseline_macro_f1=baseline.macro_f1 if baseline else None,
        test_samples=len(test.labels),
        metrics_path=paths.metrics,
        reference_path=paths.monitoring_reference,
    )


def metrics_json(
    scores: Scores, baseline: Scores | None, baseline_name: str, test_samples: int
) -> dict[str, Any]:
    """``metrics.json``: what ``dvc metrics show`` shows and the registry's gate compares."""
    metrics: dict[str, Any] = {
        "accuracy": round(scores.accuracy, 6),
        "macro_f1": round(scores.macro_f1, 6),
        "test_samples": test_samples,
    }
    if baseline is not None:
        metrics["baseline"] = {
            "model": baseline_name,
            "accuracy": round(baseline.accuracy, 6),
            "macro_f1": round(baseline.macro_f1, 6),
        }
    return metrics


@dataclass(frozen=True)
class ReportPaths:
    """The files an evaluation writes into one reports folder."""

    metrics: Path
    per_class: Path
    confusion_csv: Path
    confusion_png: Path
    monitoring_reference: Path

    @classmethod
    def under(cls, reports_dir: Path = REPORTS_DIR) -> ReportPaths:
        return cls(
            metrics=reports_dir / METRICS_FILE.name,
            per_class=reports_dir / CLASS_REPORT_FILE.name,
            confusion_csv=reports_dir / CONFUSION_CSV.name,
            confusion_png=reports_dir / CONFUSION_PNG.name,
            monitoring_reference=reports_dir / MONITORING_REFERENCE.name,
        )

    def evaluation_files(self) -> tuple[Path, ...]:
        """What the run keeps under ``evaluation/`` (the reference has a folder of its own)."""
        return (self.metrics, self.per_class, self.confusion_csv, self.confusion_png)


def record_evaluation(tracker: RunTracker, reports_dir: Path = REPORTS_DIR) -> None:
    """Log an evaluation's reports to a run: the metrics (the same numbers ``dvc metrics show``
    shows), the confusion matrix and the per-class report; the monitoring reference under
    ``monitoring/``, where the monitor looks for the served version's."""
    paths = ReportPaths.under(reports_dir)
    metrics = read_json(paths.metrics)
    logged = {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]}
    if baseline := metrics.get("baseline"):
        logged |= {
            "baseline_accuracy": baseline["accuracy"],
            "baseline_macro_f1": baseline["macro_f1"],
        }
    tracker.log_metrics(logged)
    for path in paths.evaluation_files():
        tracker.log_artifact(path, "evaluation")
    tracker.log_artifact(paths.monitoring_reference, REFERENCE_ARTIFACT_DIR)
    tracker.set_tags({TAG_EVALUATED: "true"})


def classification_scores(
    actual: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]
) -> Scores:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    label_ids = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=label_ids, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    return Scores(
        accuracy=float(accuracy_score(actual, predicted)),
        macro_f1=float(
            f1_score(actual, predicted, labels=label_ids, average="macro", zero_division=0)
        ),
        per_class=per_class,
        confusion=confusion_matrix(actual, predicted, labels=label_ids),
    )


def fit_baseline(
    name: str,
    train: ImageDataset,
    test: ImageDataset,
    info: dict[str, Any],
    params: EvaluateParams,
) -> Scores:
    """A scikit-learn classifier on standardised pixels of the same train/test split:
    ``logistic_regression`` (multinomial) or ``svm`` (RBF kernel, ``SVC(C=SVM_C)``, the
    stronger bar on small images)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    rows = np.arange(len(train.labels))
    if len(rows) > params.baseline_max_train_samples:
        rows = np.sort(
            np.random.default_rng(BASELINE_SEED).permutation(rows)[
                : params.baseline_max_train_samples
            ]
        )
        log.info(
            "evaluate: baseline fits on %d of %d train images (evaluate.baseline_max_"
            "train_samples)",
            len(rows),
            len(train.labels),
        )
    started = time.perf_counter()
    classifier = (
        SVC(C=SVM_C, max_iter=params.baseline_max_iter * SVM_ITERATIONS_PER_ITER)
        if name == "svm"
        else LogisticRegression(max_iter=params.baseline_max_iter)
    )
    pixels = len(rows) * int(np.prod(train.images.shape[1:]))
    blas_threads = 1 if pixels < BASELINE_ONE_THREAD_BELOW else None  # None: the library's own
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(blas_threads, "blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(_standardised(train.images[rows], info), train.labels[rows])
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning(
            "evaluate: the baseline did not converge in %d iterations "
            "(raise evaluate.baseline_max_iter)",
            params.baseline_max_iter,
        )
    log.info("evaluate: %s baseline fitted in %.1fs", name, time.perf_counter() - started)
    predicted = classifier.predict(_standardised(test.images, info))
    return classification_scores(test.labels, predicted, test.class_names)


def _standardised(images: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    mean = np.asarray(info["mean"], dtype=np.float32)
    std = np.asarray(info["std"], dtype=np.float32)
    return ((images.astype(np.float32) / 255.0 - mean) / std).reshape(len(images), -1)


def write_confusion_csv(
    path: Path, actual: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]
) -> None:
    """One row per test image, the layout DVC's ``confusion`` plot template reads."""
    names = np.asarray(class_names)
    lines = [
        "actual,predicted",
        *(f"{a},{p}" for a, p in zip(names[actual], names[predicted], strict=True)),
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot_confusion_matrix(
    path: Path, scores: Scores, class_names: tuple[str, ...], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = scores.confusion
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(f"{title}\naccuracy {scores.accuracy:.4f}, macro-F1 {scores.macro_f1:.4f}")
    if len(class_names) <= 30:
        threshold = matrix.max() / 2
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(
                column,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > threshold else "black",
            )
    figure.tight_layout()
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        figure.savefig(handle, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    params = load_params()
    # Under the flow MLFLOW_RUN_ID names the pipeline run; under plain `dvc repro` the
    # evaluation joins the run that trained this very model file, found by its hash.
    with stage_run(params, "evaluate", WithoutFlow.MODEL_RUN) as tracker:
        run_evaluate(params.evaluate)
        record_evaluation(tracker)


if __name__ == "__main__":
    stage_main(main)

"""Benchmark monitoring of a window of logged predictions, end to end as the monitor does it.

    .venv/bin/python bench/monitoring.py [--rows 100000] [--window ROWS] [--json results.json]

Writes a prediction log of N rows to a temporary folder with the serving app's own writer
(PredictionLog: 8x8 sklearn digits as collect makes them, resampled with replacement, the softmax
of a LogisticRegression fit on digits, 10% labelled through its /feedback path), and saves a
monitoring reference built from a digits train/val split. Then, in a fresh process (so its
peak memory is its own), imports the monitor, loads the reference, reads the window
(read_window), fits it (fitted), decides (check_window: compare with params.monitor) and writes
the HTML report (image_features + write_report), as tasks.lifecycle.monitor does.

Targets (issue): 100,000 logged predictions under 30 s, peak memory under 1 GB.
Exits 1 if a target is missed. Figures also go to bench/results/monitoring-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 30.0
TARGET_PEAK_MB = 1024.0
VERSION = "1"
REQUEST = 64  # images per logged request (a /predict batch)


def peak_mb() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss alone: Linux carries the
    parent's RSS at fork over into a child's ru_maxrss, so it would count the setup too."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def write_log(root: Path, rows: int, model_name: str) -> dict[str, float]:
    """The prediction log and reference.npz in ``root``; setup figures."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from tasks.core.prediction_log.labels import Label
    from tasks.core.prediction_log.writer import PredictionLog
    from tasks.monitoring.reference import build_reference, save_reference
    from tasks.stages.collecting.digits import digit_pixels

    digits = load_digits()
    images = digit_pixels(digits.images)
    labels, names = digits.target.astype(np.int64), tuple(str(n) for n in digits.target_names)
    flat = images.reshape(len(images), -1) / 255.0
    rest, test = train_test_split(np.arange(len(images)), test_size=0.15, random_state=0)
    train, val = train_test_split(rest, test_size=0.15 / 0.85, random_state=0)
    classifier = LogisticRegression(max_iter=2000).fit(flat[train], labels[train])
    accuracy = classifier.score(flat[test], labels[test])
    reference = build_reference(images[train], classifier.predict_proba(flat[val]), names, accuracy)
    save_reference(reference, root / "reference.npz")

    rng = np.random.default_rng(0)
    picked = rng.integers(0, len(images), size=rows)
    probabilities = classifier.predict_proba(flat[picked]).astype(np.float32)
    model = SimpleNamespace(name=model_name, version=VERSION, class_names=names)
    started = time.perf_counter()
    writer = PredictionLog(root / "predictions.sqlite", max_rows=rows).start()
    ids: list[str] = []
    for start in range(0, rows, REQUEST):
        part = slice(start, start + REQUEST)
        ids += writer.record(model, "/predict", images[picked[part]], probabilities[part])
        while writer.queue.qsize() >= writer.max_queued // 2:  # never let record() drop
            time.sleep(0.01)
    labelled = rng.choice(rows, size=rows // 10, replace=False)
    done = writer.submit_labels([Label(ids[i], int(labels[picked[i]])) for i in labelled])
    done.result(timeout=600)
    writer.close(timeout=600)
    if writer.dropped or writer.written != rows:
        sys.exit(f"log writer wrote {writer.written} of {rows} rows ({writer.dropped} dropped)")
    return {
        "log_write_s": round(time.perf_counter() - started, 2),
        "log_mb": round((root / "predictions.sqlite").stat().st_size / 2**20, 1),
        "labelled": writer.labelled,
        "reference_test_accuracy": round(accuracy, 4),
    }


def measure(root: Path, window: int) -> dict[str, float | str | bool]:
    """Runs in the child process: the monitor's work only, timed and memory-profiled."""
    steps: dict[str, float] = {}
    started = time.perf_counter()
    from tasks.core.config import load_params

    steps["import_config_s"] = time.perf_counter() - started
    rss_after_config = peak_mb()
    torch_loaded = "torch" in sys.modules
    from tasks.core.prediction_log.readers import read_window
    from tasks.lifecycle.monitor import check_window
    from tasks.lifecycle.monitor_window import Window, fitted
    from tasks.monitoring.features import image_features
    from tasks.monitoring.reference import load_reference
    from tasks.monitoring.report import write_report

    steps["import_rest_s"] = time.perf_counter() - started - steps["import_config_s"]
    rss_after_imports = peak_mb()
    params = load_params(overrides=[f"monitor.window={window}"])

    def step(name, function, *args):
        began = time.perf_counter()
        value = function(*args)
        steps[name] = time.perf_counter() - began
        return value

    reference = step("load_reference_s", load_reference, root / "reference.npz")
    since = time.time() - params.monitor.max_age_hours * 3600  # as logged_window passes it
    name = params.registry.model_name
    log = step(
        "read_window_s", read_window, root / "predictions.sqlite", name, VERSION, window, since
    )
    images = step("fitted_s", fitted, log.images, reference)
    current = Window(images, log.probabilities, log.labels, "bench")
    result = step("compare_s", check_window, params, current, reference)
    report = root / "report.html"
    features = step("report_features_s", image_features, current.images)
    step("write_report_s", write_report, reference, features, current.probabilities, result, report)
    figures = {key: round(value, 2) for key, value in steps.items()}
    figures["monitor_s"] = round(sum(v for k, v in steps.items() if not k.startswith("import")), 2)
    figures["total_s"] = round(time.perf_counter() - started, 2)
    return {
        **figures,
        "window_rows": result.rows,
        "window_labelled": result.labelled,
        "decision": result.decision,
        "report_mb": round(report.stat().st_size / 2**20, 2),
        "torch_imported_by_config": torch_loaded,
        "rss_after_config_import_mb": rss_after_config,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": peak_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),  # includes the parent's RSS at spawn (see peak_mb)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="logged predictions")
    parser.add_argument("--window", type=int, help="rows the monitor reads (default: --rows)")
    parser.add_argument("--json", type=Path, help="default: bench/results/monitoring-<date>.json")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's entry
    args = parser.parse_args()
    window = args.window or args.rows
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)  # params.yaml
    if args.measure:
        print(json.dumps(measure(args.measure, window)))
        return 0

    from tasks.core.config import load_params

    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-monitoring-") as tmp:
        root = Path(tmp)
        setup = write_log(root, args.rows, load_params().registry.model_name)
        print(f"wrote {args.rows:,} logged predictions in {setup['log_write_s']}s")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(root), "--window", str(window)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if child.returncode != 0:
            sys.exit(f"measurement failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures = {"rows": args.rows, "window": window, **setup, **figures}
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    targets = {"total_s": TARGET_SECONDS, "peak_rss_mb": TARGET_PEAK_MB}
    missed = [key for key, limit in targets.items() if figures[key] >= limit]
    for key, value in figures.items():
        target = f"< {targets[key]:g}" if key in targets else ""
        verdict = ("MISSED" if key in missed else "ok") if target else ""
        print(f"  {key:<28}{value!s:>12}  {target} {verdict}")
    if figures["torch_imported_by_config"]:
        print(
            f"  note: importing tasks.core.config pulls in torch: "
            f"{figures['rss_after_config_import_mb']:.0f} MB RSS before any monitoring work"
        )
    path = args.json or REPO / "bench" / "results" / f"monitoring-{date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"  figures written to {path}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

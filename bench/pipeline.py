"""Benchmark the pipeline against the spine's quality bar, in a fresh clone of this repo.

    .venv/bin/python bench/pipeline.py [--json results.json] [--repo .]

Measures, with the default params.yaml on the embedded digits:
  - `mlcycle run` end to end (what `make run` does once installed)      target < 180 s
  - the train stage alone (`dvc repro --force --single-item train`)      target <  60 s
  - a second `dvc repro` with nothing changed                            target <   3 s
  - the CNN's test accuracy, beside the logistic-regression baseline     target >= 0.97
Exits 1 if a target is missed. Uses the installed venv; clones the committed HEAD.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGETS = {
    "mlcycle_run_s": ("<", 180.0),
    "train_stage_s": ("<", 60.0),
    "noop_repro_s": ("<", 3.0),
    "test_accuracy": (">=", 0.97),
}


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as tmp:
        clone = Path(tmp) / "mlcycle"
        subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
        }
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "PREFECT_API_URL"):
            env.pop(name, None)
        dvc = [sys.executable, "-m", "dvc"]
        figures: dict[str, float | str] = {
            "mlcycle_run_s": timed([str(BIN / "mlcycle"), "run"], clone, env),
            "noop_repro_s": timed([*dvc, "repro"], clone, env),
            "train_stage_s": timed(
                [*dvc, "repro", "--force", "--single-item", "train"], clone, env
            ),
        }
        metrics = json.loads((clone / "reports" / "metrics.json").read_text())
        figures["test_accuracy"] = metrics["accuracy"]
        figures["test_macro_f1"] = metrics["macro_f1"]
        if baseline := metrics.get("baseline"):
            figures["baseline_accuracy"] = baseline["accuracy"]
            figures["baseline_macro_f1"] = baseline["macro_f1"]
        train = json.loads((clone / "reports" / "train.json").read_text())
        figures["epochs_run"] = train["epochs_run"]

    import torch

    figures["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    missed = []
    print(f"{'figure':<20}{'measured':>12}  target")
    for name, value in figures.items():
        target = TARGETS.get(name)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = ""
        if target:
            op, bound = target
            ok = value < bound if op == "<" else value >= bound
            verdict = f"{op} {bound:g}  {'ok' if ok else 'MISSED'}"
            if not ok:
                missed.append(name)
        print(f"{name:<20}{shown:>12}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark data validation at scale: profiling plus both Great Expectations suites.

    .venv/bin/python bench/validation.py [--samples 1000000] [--json results.json]

Writes N random 28x28 uint8 images in 10 classes to a temporary data/raw, then, in a fresh
process (so its peak memory is its own), runs the validate stage's function (profile + the
raw_samples suite + publishing data/validated) and the split gate preprocess runs
(profile + the processed_splits suite) on a stratified split of the same images.

Targets (issue 3, 2-core machine): both gates together under 15 s and peak memory under 3 GB
for 1,000,000 samples. Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 15.0
TARGET_PEAK_GB = 3.0
CHUNK = 100_000


def write_dataset(raw: Path, samples: int) -> None:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(
        raw / "images.npy", mode="w+", dtype=np.uint8, shape=(samples, 28, 28, 1)
    )
    for start in range(0, samples, CHUNK):
        stop = min(start + CHUNK, samples)
        images[start:stop] = rng.integers(0, 256, size=(stop - start, 28, 28, 1), dtype=np.uint8)
    images.flush()
    del images
    labels = np.arange(samples, dtype=np.int64) % 10
    np.save(raw / "labels.npy", labels)
    names = [str(k) for k in range(10)]
    counts = np.bincount(labels, minlength=10).tolist()
    meta = {
        "source": "bench",
        "num_samples": samples,
        "image_shape": [28, 28, 1],
        "dtype": "uint8",
        "class_names": names,
        "class_counts": dict(zip(names, counts, strict=True)),
    }
    (raw / "meta.json").write_text(json.dumps(meta))


def measure(root: Path) -> dict[str, float]:
    """Runs in the child process: the validation work only, timed and memory-profiled."""
    sys.path.insert(0, str(REPO))
    import shutil

    from tasks.core.config import ValidateParams
    from tasks.core.console import configure_logging
    from tasks.core.files import ImageDataset, read_raw_dataset
    from tasks.stages.preprocess import stratified_split
    from tasks.stages.validate import run_validate
    from tasks.validation.gate import ValidationPlaces, validate_splits
    from tasks.validation.profiles import content_hashes

    configure_logging()
    shutil.copytree(REPO / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    places = ValidationPlaces(root / "gx", root / "reports", root / "quarantine")
    params = ValidateParams(
        min_rows=100, max_rows=10_000_000, min_class_share=0.02, max_blank_share=0.01
    )
    started = time.perf_counter()
    run_validate(params, root / "raw", root / "validated", places)
    raw_gate = time.perf_counter() - started

    # What preprocess does before its gate (not timed as validation): load and split.
    data = read_raw_dataset(root / "validated")
    started = time.perf_counter()
    hashes = content_hashes(data.images)  # preprocess hashes once, to split and to check
    hashing = time.perf_counter() - started
    rows = stratified_split(data.labels, data.class_names, 0.15, 0.15, seed=42, groups=hashes)
    splits = {
        name: (ImageDataset(data.images[r], data.labels[r], data.class_names), r)
        for name, r in rows.items()
    }
    info = {"class_names": list(data.class_names)}
    started = time.perf_counter()
    validate_splits(splits, hashes, info, places)
    split_gate = hashing + time.perf_counter() - started
    return {
        "raw_gate_s": round(raw_gate, 2),
        "split_gate_s": round(split_gate, 2),
        "validation_s": round(raw_gate + split_gate, 2),
        "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's entry
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-validation-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_dataset(root / "raw", args.samples)
        print(f"wrote {args.samples:,} images of 28x28 in {time.perf_counter() - started:.1f}s")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(root)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if child.returncode != 0:
            sys.exit(f"measurement failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures["samples"] = args.samples
    missed = []
    if figures["validation_s"] >= TARGET_SECONDS:
        missed.append("validation_s")
    if figures["peak_memory_gb"] >= TARGET_PEAK_GB:
        missed.append("peak_memory_gb")
    for name, value in figures.items():
        target = {
            "validation_s": f"< {TARGET_SECONDS:g}",
            "peak_memory_gb": f"< {TARGET_PEAK_GB:g}",
        }.get(name, "")
        verdict = ("MISSED" if name in missed else "ok") if target else ""
        print(f"{name:<16}{value:>12}  {target} {verdict}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the pipeline at MNIST scale and beyond: collect.augment_to, then every data stage and
one training epoch, timed and memory-profiled per stage.

    .venv/bin/python bench/scaling.py [--sizes 60000 250000 1000000] [--train-sizes ...]
        [--families cnn mlp]
        [--device auto|cpu|cuda] [--out results.json] [--verbose]

For each size, in a temporary folder and with params.yaml's defaults otherwise, each step runs
in a fresh process of its own, so its peak memory (VmHWM) is its own:

1. collect: sklearn-digits with collect.augment_to=<size> (collect.seed of params.yaml)
2. validate: the raw_samples gate, publishing data/validated
3. preprocess: the split (copies of one digit kept in one split) and its processed_splits gate
4. train cnn / train mlp: one epoch (train.epochs=1) of the default model of each family through
   run_train, the train stage's function (sizes of --train-sizes only; by default all sizes on
   CUDA and those up to 250,000 on CPU, where an epoch at 1,000,000 takes long)

Per size and step: wall seconds of the stage function (imports excluded), peak RSS, RSS after
the step's stage module is imported (Prefect, sklearn for collect, torch for train: the floor
of the step; what the stage imports while it runs, such as Great Expectations, counts in its
peak as it would in `python -m tasks.stages.<step>`), the dataset's in-memory size
(N x 28 x 28 bytes), peak / dataset, and (peak - imports) / dataset, what the data itself
costs. Prints one markdown table, then writes the figures to
bench/results/scaling-<date>-<machine>.json (machine: CPU model and cores, GPU, torch, CUDA,
python; the load average during the run, since other work on the machine slows the timings).

Target (collect, 2-core machine): 1,000,000 images well under 60 s, peak under 3x the dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench/zoo.py

from zoo import LoadSampler, machine_facts, say, write_figures  # noqa: E402

SIZES = (60_000, 250_000, 1_000_000)
CPU_TRAIN_LIMIT = 250_000  # larger sizes train only when asked (--train-sizes) on CPU
TRAIN_FAMILIES = ("cnn", "mlp")
IMAGE_BYTES = 28 * 28  # one augmented digit, uint8
COLLECT_SECONDS_TARGET = 60.0
COLLECT_PEAK_RATIO_TARGET = 3.0
RESULT_PREFIX = "SCALING-RESULT "


def gib(size_bytes: float) -> float:
    return round(size_bytes / 2**30, 3)


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec.
    (ru_maxrss does not: it keeps the peak of the parent that forked this process, here the
    benchmark's own, which had torch imported.)"""
    with suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- the child: one step, in a process of its own ------------------------------------------


def run_step(step: str, root: Path, size: int, device: str) -> dict[str, Any]:
    """Runs in the child process: one stage function on ``root/data``, timed. Only the step's
    own stage module is imported, as ``python -m tasks.stages.<step>`` would: what it imports
    itself while it runs (Great Expectations, torch) counts in its peak."""
    import tasks  # noqa: F401  (telemetry switches)
    from tasks.core.config import load_params
    from tasks.validation.gate import ValidationPlaces

    overrides = [f"collect.augment_to={size}", f"train.device={device}"]
    params = load_params(REPO / "params.yaml", overrides=overrides)
    places = ValidationPlaces(root / "gx", root / "reports", root / "data" / "quarantine")
    data = root / "data"
    if step == "collect":
        from tasks.stages.collect import run_collect
        from tasks.stages.collecting.digits import load_sklearn_digits

        load_sklearn_digits()  # sklearn's loader and its data: imports, not the step's cost
    elif step == "validate":
        from tasks.stages.validate import run_validate
    elif step == "preprocess":
        from tasks.stages.preprocess import run_preprocess
    else:
        from tasks.stages.train import run_train
    after_imports = peak_rss_bytes()
    started = time.perf_counter()
    facts: dict[str, Any] = {}
    if step == "collect":
        run_collect(params.collect, data / "raw", data / "external")
    elif step == "validate":
        report = run_validate(params.validate, data / "raw", data / "validated", places)
        facts["expectations"] = len(report.outcomes)
    elif step == "preprocess":
        result = run_preprocess(params.preprocess, data / "validated", data / "processed", places)
        facts["split_sizes"] = result.split_sizes
    else:
        family = step.removeprefix("train-")
        train = with_changes(params.train, model=family, epochs=1)
        place = root / "runs" / family
        result = run_train(
            train, data / "processed", place / "model.pt", place / "checkpoints", place / "reports"
        )
        facts.update(
            device=result.device,
            val_accuracy=round(result.best_val_accuracy, 4),
            train_images=json.loads((data / "processed" / "preprocess.json").read_text())[
                "split_sizes"
            ]["train"],
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "peak": peak_rss_bytes(),
        "imports": after_imports,
        **facts,
    }


def with_changes(train: Any, **changes: Any) -> Any:
    """``train`` with top-level changes, validated like params.yaml."""
    from tasks.core.config import TrainParams

    return TrainParams.model_validate({**train.model_dump(), **changes})


# --- the parent: sizes, steps, the table ---------------------------------------------------


def measure(step: str, root: Path, size: int, device: str, verbose: bool) -> dict[str, Any]:
    """``step`` in a fresh process; its own log lines shown with ``verbose``."""
    command = [sys.executable, __file__, "--step", step, "--root", str(root)]
    command += ["--sizes", str(size), "--device", device]
    process = subprocess.Popen(
        command,
        cwd=root,  # a relative default path of a stage lands here, never in the repository
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    result, tail = None, []
    for line in process.stdout:
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line.removeprefix(RESULT_PREFIX))
            continue
        tail = [*tail[-40:], line.rstrip()]
        if verbose:
            say(f"    {line.rstrip()}")
    if process.wait() != 0 or result is None:
        sys.exit(f"{step} at {size:,} images failed:\n" + "\n".join(tail))
    dataset = size * IMAGE_BYTES
    result.update(
        step=step,
        size=size,
        dataset_gib=gib(dataset),
        peak_gib=gib(result.pop("peak")),
        imports_gib=gib(result.pop("imports")),
    )
    result["peak_over_dataset"] = round(result["peak_gib"] / result["dataset_gib"], 2)
    growth = (result["peak_gib"] - result["imports_gib"]) / result["dataset_gib"]
    result["growth_over_dataset"] = round(growth, 2)
    return result


def run_size(size: int, families: list[str], device: str, verbose: bool) -> list[dict[str, Any]]:
    """The data steps at ``size``, then one epoch of each of ``families``."""
    import shutil

    steps = ["collect", "validate", "preprocess", *(f"train-{family}" for family in families)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-scaling-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
        for step in steps:
            row = measure(step, root, size, device, verbose)
            rows.append(row)
            extra = f"  val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
            say(
                f"[{size:>9,}] {step:<11} {row['seconds']:7.1f}s  peak {row['peak_gib']:.2f} "
                f"GiB (imports {row['imports_gib']:.2f}, dataset {row['dataset_gib']:.3f}: "
                f"x{row['peak_over_dataset']:.1f}, growth x{row['growth_over_dataset']:.1f})"
                f"{extra}"
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| images | step | seconds | peak RSS GiB | after imports GiB | dataset GiB | "
        "peak / dataset | (peak - imports) / dataset | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        notes = ""
        if "split_sizes" in row:
            notes = "split " + " / ".join(str(v) for v in row["split_sizes"].values())
        elif "val_accuracy" in row:
            notes = (
                f"1 epoch, {row['train_images']:,} train images on {row['device']}: "
                f"{row['train_images'] / row['seconds']:,.0f} images/s, val acc "
                f"{row['val_accuracy']:.4f}"
            )
        lines.append(
            f"| {row['size']:,} | {row['step']} | {row['seconds']:.1f} | {row['peak_gib']:.2f} | "
            f"{row['imports_gib']:.2f} | {row['dataset_gib']:.3f} | "
            f"{row['peak_over_dataset']:.1f} | {row['growth_over_dataset']:.2f} | {notes} |"
        )
    return "\n".join(lines)


def collect_targets_missed(rows: list[dict[str, Any]]) -> list[str]:
    """The collect targets, judged where 1,000,000 images or more were collected."""
    missed = []
    for row in rows:
        if row["step"] != "collect" or row["size"] < 1_000_000:
            continue
        if row["seconds"] >= COLLECT_SECONDS_TARGET:
            missed.append(f"collect seconds at {row['size']:,}")
        if row["peak_over_dataset"] >= COLLECT_PEAK_RATIO_TARGET:
            missed.append(f"collect peak at {row['size']:,}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument(
        "--train-sizes",
        nargs="*",
        type=int,
        help="sizes that also train one epoch; default: all on CUDA, up to "
        f"{CPU_TRAIN_LIMIT:,} on CPU",
    )
    parser.add_argument(
        "--families", nargs="+", choices=TRAIN_FAMILIES, default=list(TRAIN_FAMILIES)
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, help="default: bench/results/scaling-<date>-<machine>")
    parser.add_argument("--verbose", action="store_true", help="the stages' own log lines too")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # the child's entry
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.step:
        from tasks.core.console import configure_logging

        configure_logging()
        figures = run_step(args.step, args.root, args.sizes[0], args.device)
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
        return 0

    from tasks.training.device import resolve_device

    device = str(resolve_device(args.device))
    machine = machine_facts(device)
    on_cuda = device.startswith("cuda")
    train_sizes = set(
        args.train_sizes
        if args.train_sizes is not None
        else [size for size in args.sizes if on_cuda or size <= CPU_TRAIN_LIMIT]
    )
    load = LoadSampler().start()
    figures: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": shlex.join(["python", "bench/scaling.py", *sys.argv[1:]]),
        "machine": machine,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "data": "sklearn digits, collect.augment_to=<size>, params.yaml defaults otherwise",
    }
    say(
        f"scaling benchmark on {device} ({machine['cpu']}, {machine['cores']} cores"
        f"{', ' + machine['gpu'] if machine['gpu'] else ''}, {machine['torch_threads']} torch "
        f"threads); load average {figures['load_average_before']}"
    )
    started = time.perf_counter()
    rows = []
    for size in args.sizes:
        families = args.families if size in train_sizes else []
        rows += run_size(size, families, args.device, args.verbose)
    figures["rows"] = rows
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    figures["load_average_1min_during"] = load.stop()
    missed = collect_targets_missed(rows)
    figures["targets_missed"] = missed

    say("")
    say(table(rows))
    say("")
    say(
        f"total {figures['total_seconds']:.0f}s on {machine['cores']} cores; 1-min load average "
        f"during the run {figures['load_average_1min_during']}"
        + (f"; targets missed: {', '.join(missed)}" if missed else "; no collect target missed")
    )
    write_figures(figures, "scaling", args.out.resolve() if args.out else None)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark of bench/ one after the other and summarise their targets in one table.

    .venv/bin/python bench/suite.py [--only training pipeline ...] [--quick]
        [--device auto|cpu|cuda]        (`make bench` runs it with no options)

On a GPU machine `make bench` uses CUDA by itself (--device auto: training.py and zoo.py train
on the GPU when torch sees one); --device cpu measures the CPU there.

The steps, each a subprocess of its own, in this order (a missed target or a failure in one
does not stop the next; each exit code is recorded):
  training    bench/training.py: our train stage against the classic tutorial loop (MLP, CNN)
  pipeline    bench/pipeline.py: `mlcycle run` in a fresh clone, the train stage, no-op re-runs,
              the pipeline's overhead with a temporary Prefect API and with a running server
  zoo         bench/zoo.py: every model family's quality, baselines, the selection
  validation  bench/validation.py: both data-validation gates on 1,000,000 images
  monitoring  bench/monitoring.py: monitoring a window of 100,000 logged predictions
  serving     `mlcycle run` in this workspace (serving needs a champion), then
              bench/serving.py against `mlflow models serve` (needs wrk: `make bench` installs it)
  scaling     bench/scaling.py: collect (augment_to), the data stages and one training epoch at
              60,000 to 1,000,000 images (skipped when the script is not there)
  soak        bench/soak.py: 24 minutes unattended (--quick: 12) with a real Prefect server,
              schedules, the drift trigger, a worker, the serving app and drifting traffic
Each script writes its own JSON (bench/results/<step>-<date>-<machine>.json); the suite adds
them, with the machine (CPU model and cores, GPU, torch and CUDA versions), the exit codes and
seconds, into bench/results/<date>-<machine>.json and prints one table: figure, measured,
target, PASS/FAIL. --quick runs smaller sizes (a smoke run of the plumbing, not figures to
quote); its files end in -quick. Exits 1 if a step failed or a target was missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from zoo import machine_facts, machine_slug, say, verdict

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent

Check = dict[str, Any]  # {"figure", "measured", "target", "passed"}


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    json_option: str  # the script's option naming its JSON file
    full: tuple[str, ...] = ()  # arguments of the full run
    quick: tuple[str, ...] = ()  # arguments of a --quick run
    takes_device: bool = False
    before: tuple[tuple[str, ...], ...] = ()  # commands run first, in REPO


STEPS = (
    Step(
        "training",
        "training.py",
        "--json",
        quick=("--samples", "0", "--epochs", "3"),
        takes_device=True,
    ),
    Step("pipeline", "pipeline.py", "--json", quick=("--no-server",)),
    Step(
        "zoo",
        "zoo.py",
        "--out",
        quick=("--families", "mlp", "cnn", "--skip-selection", "--seeds", "0"),
        takes_device=True,
    ),
    Step("validation", "validation.py", "--json", quick=("--samples", "100000")),
    Step("monitoring", "monitoring.py", "--json", quick=("--rows", "10000")),
    Step(
        "serving",
        "serving.py",
        "--json",
        quick=("--duration", "3", "--rounds", "1"),
        before=((str(BIN / "mlcycle"), "run"),),
    ),
    Step("scaling", "scaling.py", "--out", quick=("--sizes", "60000"), takes_device=True),
    Step("soak", "soak.py", "--json", quick=("--minutes", "12")),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def command_of(step: Step, out: Path, quick: bool, device: str) -> list[str] | None:
    """The step's command line; None when its script is not there."""
    script = BENCH / step.script
    if not script.is_file():
        return None
    command = [
        PYTHON,
        str(script),
        *(step.quick if quick else step.full),
        step.json_option,
        str(out),
    ]
    return [*command, "--device", device] if step.takes_device else command


def run_step(step: Step, out: Path, quick: bool, device: str) -> dict[str, Any]:
    """Run the step's commands; its exit code, seconds and figures (its JSON, if written)."""
    command = command_of(step, out, quick, device)
    if command is None:
        say(f"\n=== {step.name}: bench/{step.script} is not there; skipped")
        return {"skipped": f"bench/{step.script} not found"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    record: dict[str, Any] = {"command": " ".join(command), "json": str(out)}
    started = time.perf_counter()
    for before in step.before:
        say(f"\n=== {step.name}: {' '.join(before)}")
        code = subprocess.run(before, cwd=REPO, env=env).returncode
        record.setdefault("before", []).append({"command": " ".join(before), "exit_code": code})
        if code != 0:
            record |= {"exit_code": code, "seconds": round(time.perf_counter() - started, 1)}
            say(f"=== {step.name}: {' '.join(before)} failed (exit {code}); step not run")
            return record
    say(f"\n=== {step.name}: {' '.join(command)}")
    out.unlink(missing_ok=True)  # figures of an earlier run must not pass for this one's
    code = subprocess.run(command, cwd=REPO, env=env).returncode
    record |= {"exit_code": code, "seconds": round(time.perf_counter() - started, 1)}
    if out.is_file():
        record["figures"] = json.loads(out.read_text())
    say(f"=== {step.name}: exit {code} after {record['seconds']:.0f}s")
    return record


def check(figure: str, measured: Any, op: str, bound: float) -> Check:
    passed = {"<": measured < bound, "<=": measured <= bound, ">=": measured >= bound}[op]
    return {"figure": figure, "measured": measured, "target": f"{op} {bound:g}", "passed": passed}


def bench_module(name: str) -> Any:
    """A benchmark script as a module, for its target constants (one source of truth)."""
    return importlib.import_module(name)


def zoo_checks(figures: dict[str, Any]) -> list[Check]:
    bar = bench_module("zoo")
    rows = [
        {
            "figure": f"{row['model']} test accuracy (digits)",
            "measured": row["test_accuracy"],
            "target": f">= {bar.MIN_ACCURACY:g}",
            "passed": row["passed"],
        }
        for row in figures.get("families", [])
    ]
    if denoise := figures.get("denoising"):
        rows.append(
            {
                "figure": "denoising MSE / identity's",
                "measured": denoise["ratio"],
                "target": "< 1",
                "passed": denoise["passed"],
            }
        )
    if select := figures.get("selection"):
        rows.append(
            check("selection seconds", select["select_seconds"], "<", bar.MAX_SELECT_SECONDS)
        )
        rows.append(
            {
                "figure": "selected model over SVM (test accuracy margin)",
                "measured": select["margin_over_svm"],
                "target": "> 0",
                "passed": select["beats_svm"],
            }
        )
    return rows


def validation_checks(figures: dict[str, Any]) -> list[Check]:
    bar = bench_module("validation")
    samples = f"{figures.get('samples', 0):,}"
    return [
        check(
            f"validation of {samples} images (s)", figures["validation_s"], "<", bar.TARGET_SECONDS
        ),
        check("its peak memory (GB)", figures["peak_memory_gb"], "<", bar.TARGET_PEAK_GB),
    ]


def monitoring_checks(figures: dict[str, Any]) -> list[Check]:
    bar = bench_module("monitoring")
    rows = f"{figures.get('rows', 0):,}"
    return [
        check(
            f"monitoring {rows} logged predictions (s)", figures["total_s"], "<", bar.TARGET_SECONDS
        ),
        check("its peak memory (MB)", figures["peak_rss_mb"], "<", bar.TARGET_PEAK_MB),
    ]


def serving_checks(figures: dict[str, Any]) -> list[Check]:
    targets = bench_module("serving").TARGETS
    return [
        check(key, figures[key], op, bound)
        for key, (op, bound) in targets.items()
        if isinstance(figures.get(key), int | float)
    ]


def scaling_checks(figures: dict[str, Any]) -> list[Check]:
    """The collect targets, judged at 1,000,000 images or more (as scaling.py does)."""
    bar = bench_module("scaling")
    rows = []
    for row in figures.get("rows", []):
        if row["step"] == "collect" and row["size"] >= 1_000_000:
            rows += [
                check(
                    f"collect of {row['size']:,} images (s)",
                    row["seconds"],
                    "<",
                    bar.COLLECT_SECONDS_TARGET,
                ),
                check(
                    "its peak memory over the dataset's size",
                    row["peak_over_dataset"],
                    "<",
                    bar.COLLECT_PEAK_RATIO_TARGET,
                ),
            ]
    return rows


EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Check]]] = {
    "zoo": zoo_checks,
    "validation": validation_checks,
    "monitoring": monitoring_checks,
    "serving": serving_checks,
    "scaling": scaling_checks,
}


def step_checks(name: str, record: dict[str, Any]) -> list[Check]:
    """A step's targets: its own "checks" list when its JSON has one (training, pipeline),
    else what the suite knows of its figures; a step without figures, one failed row."""
    figures = record.get("figures")
    if "skipped" in record:
        return []
    if not figures:
        return [
            {
                "figure": "ran and wrote its figures",
                "measured": f"exit {record.get('exit_code')}",
                "target": "exit 0",
                "passed": False,
            }
        ]
    if isinstance(figures.get("checks"), list):
        return figures["checks"]
    if name in EXTRACTORS:
        try:
            if rows := EXTRACTORS[name](figures):
                return rows
        except (KeyError, TypeError, AttributeError, ImportError) as error:
            say(f"warning: the {name} figures do not have the expected shape ({error!r})")
    return [
        {
            "figure": "exit code (no targets read from its figures)",
            "measured": record["exit_code"],
            "target": "0",
            "passed": record["exit_code"] == 0,
        }
    ]


def shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def summary_table(steps: dict[str, dict[str, Any]], checks: list[Check]) -> str:
    lines = ["| step | figure | measured | target | result |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['step']} | {c['figure']} | {shown(c['measured'])} | {c['target']} | "
        f"{verdict(c['passed'])} |"
        for c in checks
    ]
    lines += ["", "| step | exit code | seconds |", "|---|---|---|"]
    for name, record in steps.items():
        if "skipped" in record:
            lines.append(f"| {name} | skipped: {record['skipped']} | |")
        else:
            lines.append(f"| {name} | {record['exit_code']} | {record['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, help="these steps only")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tasks.training.device import resolve_device

    machine = machine_facts(str(resolve_device(args.device)))
    today = date.today().isoformat()
    suffix = f"{today}-{machine_slug(machine)}{'-quick' if args.quick else ''}"
    results = BENCH / "results"
    results.mkdir(parents=True, exist_ok=True)
    chosen = [step for step in STEPS if not args.only or step.name in args.only]
    say(
        f"bench suite on {machine['device_used']} ({machine['cpu']}, {machine['cores']} cores"
        f"{', ' + machine['gpu'] if machine['gpu'] else ''}; torch {machine['torch']}, CUDA "
        f"{machine['cuda']}): {', '.join(step.name for step in chosen)}"
        f"{' (quick)' if args.quick else ''}; load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    steps = {
        step.name: run_step(step, results / f"{step.name}-{suffix}.json", args.quick, args.device)
        for step in chosen
    }
    checks = [
        {"step": name, **row} for name, record in steps.items() for row in step_checks(name, record)
    ]
    failed = [name for name, record in steps.items() if record.get("exit_code", 0) != 0]
    summary = {
        "date": today,
        "command": " ".join(["python", "bench/suite.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "total_seconds": round(time.perf_counter() - started, 1),
        "summary": checks,
        "steps_failed": failed,
        "steps": steps,
    }
    path = results / f"{suffix}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    missed = [c for c in checks if not c["passed"]]
    say("")
    say(summary_table(steps, checks))
    say("")
    say(
        f"{len(checks) - len(missed)} of {len(checks)} targets met; steps with a non-zero exit: "
        f"{', '.join(failed) or 'none'}; {summary['total_seconds']:.0f}s in all"
    )
    say(f"figures written to {path}")
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the serving app against `mlflow models serve`, side by side, on loopback.

    .venv/bin/python bench/serving.py [--duration 15] [--json results.json]

Needs a champion in ./mlflow.db (run `make run` first) and `wrk` (Debian: apt-get install wrk)
as the load generator. For the champion (the default CNN), measures:
  - our POST /predict, one image per request, concurrency 8: p50 < 5 ms, p99 < 25 ms
  - requests/s of ours vs `mlflow models serve --env-manager local` with the same model and
    image, same concurrency, one after the other in this run: ours >= 1.5x
  - images/s with 64-image batches vs single-image requests/s: >= 10x
Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
TARGETS = {
    "single_p50_ms": ("<", 5.0),
    "single_p99_ms": ("<", 25.0),
    "speedup_vs_mlflow": (">=", 1.5),
    "batch64_images_per_s_over_single_rps": (">=", 10.0),
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], ready_url: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop(process)
    sys.exit(f"{' '.join(args)} did not get ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wrk(url: str, body: str, seconds: int, scratch: Path) -> dict[str, float]:
    """Requests/s and latency percentiles from `wrk --latency` (1 thread, 8 connections)."""
    script = scratch / f"post-{abs(hash(body))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        sys.exit(f"{url}: {non_2xx.group(1)} failed requests:\n{output}")

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from tasks.core.config import load_params

    params = load_params()
    name = params.registry.model_name
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    image = np.load(ROOT / "data" / "raw" / "images.npy")[:64]
    ours_single = json.dumps({"images": image[:1].tolist()})
    ours_batch = json.dumps({"images": image.tolist()})
    theirs_single = json.dumps({"inputs": image[:1].astype(np.float32).tolist()})

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        ours_port, theirs_port = free_port(), free_port()
        ours = start(
            # the benchmark's traffic is logged in its scratch folder, never the workspace's log
            [
                str(BIN / "mlcycle"),
                "serve",
                "--port",
                str(ours_port),
                "--prediction-log",
                str(scratch / "predictions.sqlite"),
            ],
            env,
            f"http://127.0.0.1:{ours_port}/ready",
            scratch / "ours.log",
        )
        try:
            url = f"http://127.0.0.1:{ours_port}/predict"
            wrk(url, ours_single, 3, scratch)  # warm-up
            single = wrk(url, ours_single, args.duration, scratch)
            batch = wrk(url, ours_batch, args.duration, scratch)
        finally:
            stop(ours)
        theirs = start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(theirs_port),
            ],
            env,
            f"http://127.0.0.1:{theirs_port}/ping",
            scratch / "theirs.log",
        )
        try:
            url = f"http://127.0.0.1:{theirs_port}/invocations"
            wrk(url, theirs_single, 3, scratch)
            mlflow_single = wrk(url, theirs_single, args.duration, scratch)
        finally:
            stop(theirs)

    figures = {
        "single_rps": single["rps"],
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        "batch64_rps": batch["rps"],
        "batch64_images_per_s": batch["rps"] * 64,
        "batch64_p50_ms": batch["p50_ms"],
        "mlflow_serve_single_rps": mlflow_single["rps"],
        "mlflow_serve_single_p50_ms": mlflow_single["p50_ms"],
        "mlflow_serve_single_p99_ms": mlflow_single["p99_ms"],
        "speedup_vs_mlflow": single["rps"] / mlflow_single["rps"],
        "batch64_images_per_s_over_single_rps": batch["rps"] * 64 / single["rps"],
    }
    print(
        f"serving benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, concurrency {CONCURRENCY}, {args.duration} s each)"
    )
    for key, value in figures.items():
        print(f"  {key:40} {value:10.2f}")
    failed = []
    for key, (op, target) in TARGETS.items():
        ok = figures[key] < target if op == "<" else figures[key] >= target
        print(f"  target {key} {op} {target}: {'ok' if ok else 'MISSED'}")
        if not ok:
            failed.append(key)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

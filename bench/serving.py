"""Benchmark the serving app against `mlflow models serve`, side by side, on loopback.

    .venv/bin/python bench/serving.py [--duration 15] [--json results.json]
        [--feedback-share 0.1] [--rounds 3] [--feedback-only]

Needs a champion in ./mlflow.db (run `make run` first) and `wrk` (Debian: apt-get install wrk)
as the load generator. For the champion (the default CNN), measures:
  - our POST /predict, one image per request, concurrency 8: p50 < 5 ms, p99 < 25 ms
  - requests/s of ours vs `mlflow models serve --env-manager local` with the same model and
    image, same concurrency, one after the other in this run: ours >= 1.5x
  - images/s with 64-image batches vs single-image requests/s: >= 10x
  - feedback never slows serving: the same single-image load, with and without POST /feedback
    at --feedback-share of all requests (each labelling a prediction id from an earlier
    predict answer, once), alternating for --rounds rounds each: the median predict p99 with
    feedback <= 1.10x the median without; no feedback refused; every label in the log after.
Exits 1 if a target is missed.

How the feedback scenario measures: wrk drives /predict alone (bench/predict_ids.lua, which
appends each answer's prediction ids to a file), so its latency histogram holds predicts only;
threads here tail that file and POST /feedback on keep-alive connections of their own (up to
4 in flight), paced by the predict answers so that feedback / (predicts + feedback) stays at
the share, and time each answer themselves. The runs without feedback use the same wrk script,
so only the feedback differs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
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
    # median predict p99 with feedback over the median without (same load, same run)
    "feedback_predict_p99_ratio": ("<=", 1.10),
}
PREDICT_IDS_SCRIPT = Path(__file__).with_name("predict_ids.lua")
NOT_LOGGED = "n"  # tasks.serving.inputs.NOT_LOGGED: an id the log dropped or sampled out


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


def wrk(
    url: str, body: str, seconds: int, scratch: Path, ids: Path | None = None
) -> dict[str, float]:
    """Requests/s and latency percentiles from `wrk --latency` (1 thread, 8 connections);
    with ``ids``, the answers' prediction ids are appended to that file (predict_ids.lua)."""
    key = abs(hash(body))
    if ids is None:
        script = scratch / f"post-{key}.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        script_args = [str(script), url]
    else:
        body_file = scratch / f"body-{key}.json"
        body_file.write_text(body)
        script_args = [str(PREDICT_IDS_SCRIPT), url, "--", str(body_file), str(ids)]
    output = subprocess.run(
        ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency", "-s", *script_args],
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
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
    }


class FeedbackSender:
    """POSTs /feedback while wrk drives /predict, as clients labelling what they were served
    would: a thread tails the ids file that predict_ids.lua appends to and hands each id on
    (once) as soon as feedback / (predicts + feedback) would fall below ``share``; a few
    threads, each with its own keep-alive connection, post them and time each answer. Arrivals
    follow the predict rate, not the feedback answers (a slow /feedback cannot thin them out,
    up to ``connections`` in flight)."""

    def __init__(self, port: int, ids: Path, share: float, label: int, connections: int = 4):
        self.port, self.ids, self.label = port, ids, label
        self.per_predict = share / (1 - share)
        self.halt = threading.Event()
        self.work: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.predicts = 0  # ids seen (one per single-image predict answer)
        self.not_logged = 0  # ids the log did not keep (dropped or sampled out): not labelled
        self.stored = 0  # 2xx answers
        self.refused: Counter[str] = Counter()  # status (or error) -> count
        self.first_refusal = ""
        self.latencies_ms: list[float] = []
        self.threads = [threading.Thread(target=self.tail, daemon=True)] + [
            threading.Thread(target=self.send, daemon=True) for _ in range(connections)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Stop handing out ids and sending (what is in flight is answered and counted)."""
        self.halt.set()
        for _ in self.threads[1:]:
            self.work.put(None)
        for thread in self.threads:
            thread.join(timeout=60)

    def tail(self) -> None:
        pending: deque[str] = deque()
        partial = b""
        handed_out = 0
        with self.ids.open("rb") as ids:
            while not self.halt.is_set():
                *lines, partial = (partial + ids.read()).split(b"\n")
                for line in lines:
                    self.predicts += 1
                    if line.startswith(NOT_LOGGED.encode()):
                        self.not_logged += 1
                    else:
                        pending.append(line.decode())
                while pending and handed_out < int(self.predicts * self.per_predict):
                    self.work.put(pending.popleft())
                    handed_out += 1
                time.sleep(0.002)

    def send(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while (prediction_id := self.work.get()) is not None and not self.halt.is_set():
            body = json.dumps({"prediction_id": prediction_id, "label": self.label})
            started = time.perf_counter()
            try:
                connection.request(
                    "POST", "/feedback", body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                answer = response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as error:
                connection.close()  # reconnects on the next request
                answer, status = str(error).encode(), type(error).__name__
            elapsed_ms = (time.perf_counter() - started) * 1e3
            with self.lock:
                self.latencies_ms.append(elapsed_ms)
                if status.startswith("2"):
                    self.stored += 1
                else:
                    self.refused[status] += 1
                    self.first_refusal = self.first_refusal or f"{status} {answer[:300].decode()}"
        connection.close()


def predict_with_feedback(
    port: int, body: str, seconds: int, scratch: Path, share: float, label: int
) -> dict[str, float]:
    """One run of wrk's single-image /predict load, with feedback at ``share`` of all
    requests when ``share`` > 0: wrk's figures (predicts only) and the sender's."""
    ids = scratch / f"ids-{time.monotonic_ns()}.txt"
    ids.touch()
    sender = FeedbackSender(port, ids, share, label) if share > 0 else None
    if sender:
        sender.start()
    started = time.perf_counter()
    try:
        result = wrk(f"http://127.0.0.1:{port}/predict", body, seconds, scratch, ids=ids)
    finally:
        elapsed = time.perf_counter() - started
        if sender:
            sender.stop()
    if not sender:
        return {**result, "feedback": 0}
    latencies = sender.latencies_ms or [float("nan")]
    return {
        **result,
        "feedback": len(sender.latencies_ms),
        "feedback_stored": sender.stored,
        "feedback_refused": sum(sender.refused.values()),
        "feedback_refusals": dict(sender.refused),
        "first_refusal": sender.first_refusal,
        "ids_not_logged": sender.not_logged,
        "feedback_rps": len(sender.latencies_ms) / elapsed,
        "feedback_share": len(sender.latencies_ms)
        / (len(sender.latencies_ms) + result["requests"]),
        "feedback_p50_ms": float(np.percentile(latencies, 50)),
        "feedback_p99_ms": float(np.percentile(latencies, 99)),
    }


def labelled_rows(log: Path) -> int:
    with sqlite3.connect(log) as connection:
        query = "SELECT COUNT(*) FROM predictions WHERE label_index IS NOT NULL"
        return connection.execute(query).fetchone()[0]


def log_dropped(port: int) -> int:
    """The app's count of predictions its log dropped (queue full), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^mlcycle_prediction_log_dropped\s+([\d.e+]+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--feedback-share",
        type=float,
        default=0.1,
        help="share of requests that are POST /feedback in the feedback scenario (0: skip it)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs each without and with feedback, alternating; medians are reported",
    )
    parser.add_argument(
        "--feedback-only",
        action="store_true",
        help="measure only the single-image load without and with feedback",
    )
    args = parser.parse_args()
    if not 0 <= args.feedback_share < 1:
        sys.exit("--feedback-share must be at least 0 and below 1")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    if args.feedback_only and args.feedback_share == 0:
        sys.exit("--feedback-only needs a --feedback-share above 0")
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
    true_label = int(np.load(ROOT / "data" / "raw" / "labels.npy")[0])  # of image[:1]
    ours_single = json.dumps({"images": image[:1].tolist()})
    ours_batch = json.dumps({"images": image.tolist()})
    theirs_single = json.dumps({"inputs": image[:1].astype(np.float32).tolist()})
    rounds: list[dict] = []
    figures: dict[str, float | int] = {}

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        ours_port, theirs_port = free_port(), free_port()
        prediction_log = scratch / "predictions.sqlite"
        ours = start(
            # the benchmark's traffic is logged in its scratch folder, never the workspace's log
            [
                str(BIN / "mlcycle"),
                "serve",
                "--port",
                str(ours_port),
                "--prediction-log",
                str(prediction_log),
            ],
            env,
            f"http://127.0.0.1:{ours_port}/ready",
            scratch / "ours.log",
        )
        try:
            url = f"http://127.0.0.1:{ours_port}/predict"
            wrk(url, ours_single, 3, scratch)  # warm-up
            if not args.feedback_only:
                single = wrk(url, ours_single, args.duration, scratch)
                batch = wrk(url, ours_batch, args.duration, scratch)
            for index in range(args.rounds if args.feedback_share > 0 else 0):
                # without, with; then with, without: neither always runs first
                shares = (0.0, args.feedback_share)[:: 1 if index % 2 == 0 else -1]
                for share in shares:
                    run = predict_with_feedback(
                        ours_port, ours_single, args.duration, scratch, share, true_label
                    )
                    rounds.append({"round": index + 1, "share": share, **run})
            dropped = log_dropped(ours_port) if rounds else 0
        finally:
            stop(ours)
        labelled = labelled_rows(prediction_log) if rounds else 0
        if not args.feedback_only:
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

    if not args.feedback_only:
        figures.update(
            {
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
        )
    checks: list[tuple[str, bool]] = []
    if rounds:
        without = [run for run in rounds if run["share"] == 0]
        with_ = [run for run in rounds if run["share"] > 0]

        def median(runs: list[dict], key: str) -> float:
            return statistics.median(run[key] for run in runs)

        sent = sum(run["feedback"] for run in with_)
        stored = sum(run["feedback_stored"] for run in with_)
        refused = sum(run["feedback_refused"] for run in with_)
        figures.update(
            {
                "predict_rps_without_feedback": median(without, "rps"),
                "predict_p50_ms_without_feedback": median(without, "p50_ms"),
                "predict_p99_ms_without_feedback": median(without, "p99_ms"),
                "predict_rps_with_feedback": median(with_, "rps"),
                "predict_p50_ms_with_feedback": median(with_, "p50_ms"),
                "predict_p99_ms_with_feedback": median(with_, "p99_ms"),
                "feedback_predict_p99_ratio": (median(with_, "p99_ms") / median(without, "p99_ms")),
                "feedback_rps": median(with_, "feedback_rps"),
                "feedback_share_of_requests": median(with_, "feedback_share"),
                "feedback_p50_ms": median(with_, "feedback_p50_ms"),
                "feedback_p99_ms": median(with_, "feedback_p99_ms"),
                "feedback_sent": sent,
                "feedback_refused": refused,
                "feedback_labelled_rows_in_log": labelled,
                "prediction_log_dropped": dropped,
                "ids_not_logged": sum(run["ids_not_logged"] for run in with_),
            }
        )
        share = figures["feedback_share_of_requests"]
        checks = [
            ("no feedback refused (non-2xx)", refused == 0),
            ("every stored label is in the log", labelled == stored == sent),
            # the senders keep up (else the load had less feedback than it says)
            (
                f"feedback share {share:.3f} >= 0.9 x {args.feedback_share:g}",
                share >= 0.9 * args.feedback_share,
            ),
        ]
    print(
        f"serving benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, concurrency {CONCURRENCY}, {args.duration} s each)"
    )
    for key, value in figures.items():
        shown = f"{value:10d}" if isinstance(value, int) else f"{value:10.2f}"
        print(f"  {key:40} {shown}")
    if rounds:
        print(
            f"  feedback rounds (predict figures from wrk; feedback timed apart, "
            f"{args.feedback_share:g} of requests):"
        )
        for run in rounds:
            line = (
                f"    round {run['round']}  {'with   ' if run['share'] else 'without'}  "
                f"predict p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  "
                f"{run['rps']:7.1f}/s"
            )
            if run["share"]:
                line += (
                    f"  feedback {run['feedback_rps']:5.1f}/s ({run['feedback_share']:.3f})  "
                    f"p50 {run['feedback_p50_ms']:6.2f} ms  p99 {run['feedback_p99_ms']:6.2f} ms"
                )
                if run["feedback_refused"]:
                    line += f"  refused {run['feedback_refusals']}: {run['first_refusal']}"
            print(line)
    failed = []
    for key, (op, target) in TARGETS.items():
        if key not in figures:
            continue
        value = figures[key]
        ok = {"<": value < target, "<=": value <= target, ">=": value >= target}[op]
        print(f"  target {key} {op} {target}: {'ok' if ok else 'MISSED'}")
        if not ok:
            failed.append(key)
    for text, ok in checks:
        print(f"  check {text}: {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(text)
    if args.json:
        args.json.write_text(json.dumps({**figures, "feedback_rounds": rounds}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

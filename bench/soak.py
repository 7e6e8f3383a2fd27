"""A week of unattended operation, in minutes: the loop turns by itself, and nothing is lost.

    .venv/bin/python bench/soak.py [--minutes 24] [--quick] [--json FILE] [--keep DIR]

In a fresh copy of this repository (its working tree, as the tests take it): `mlcycle run`
trains the first champion on the embedded digits, then a real `prefect server`, `mlcycle
deployments apply` (monitoring every minute; the drift trigger's window most of an episode, its
training Pace.retrain_delay_s after the event so that labels of the new population accrue), a
worker, `mlcycle serve`, and a traffic generator that changes the world over time: clean
digits first, then one drifted population per episode (low-contrast, thick strokes,
inverted), each image drawn with its own random strength, with ground-truth feedback for a
share of the traffic. Nobody triggers anything: the schedule runs the monitor, its drift event
runs the training deployment, the deploy step and the alias move what is served.

Written to bench/results/soak-<date>-<machine>.json (or --json), per episode: seconds from its
onset to detection (the first drift verdict over rows all logged after the onset), to the
training the trigger started, and to the retrained champion answering; live accuracy on the
new population from feedback, before and after; trainings started (target 1); drift verdicts
once the retrained model answers (its reference is the new population: none). For the whole
run: predictions sent and logged, feedback sent and stored (nothing lost), overlapping
trainings (0), server ERROR lines (0), the serving process's peak memory.

Targets: detection within 2 monitoring cycles; live accuracy on the new population back within
2 points of the clean-traffic accuracy after one retrain; one training per episode; nothing
lost. Exits 1 when a target is missed. --minutes 12 runs one episode, the default three;
--quick runs one episode at the test suite's pace (monitoring every 15 s, 80 images/s), until
the retrained model has answered for 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pipeline import PrefectServer, free_port
from zoo import machine_facts, machine_slug, say, verdict, write_figures

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

LABELLED_SHARE = 0.5  # of the traffic gets ground-truth feedback
REQUEST_EVERY_S = 0.5
POPULATIONS = ("low-contrast", "thick-strokes", "inverted")
MAX_ACCURACY_GAP = 0.02
MIN_AFTER_SAMPLES = 100  # labelled images of the new population answered by the new model


@dataclass(frozen=True)
class Pace:
    """How fast the world turns: the benchmark's minutes, or the test suite's seconds. The
    loop is the same; only the clocks and the traffic's rate differ."""

    warm_up_s: float  # clean traffic first: the monitor must say ok, and the clean accuracy
    episode_s: float  # at least this long: detection, training, serving, accuracy after
    # monitoring/hourly's period: params.yaml's cron says every minute; a shorter period is
    # set on the server after `mlcycle deployments apply` (its crons have no seconds field)
    monitor_cycle_s: float
    images_per_request: int  # every REQUEST_EVERY_S
    # The drift trigger starts its training this long after the event, so that labelled
    # images of the new population are in the training data (the first seconds of the
    # episode's traffic are on the monitor's window before the event) ...
    retrain_delay_s: float
    monitor_window: int  # newest predictions the monitor compares
    # ... and the monitoring reference of the retrained model is its newest this-many images:
    # the new population alone.
    reference_rows: int
    detection_limit_s: float  # the detection target: two cycles and the run's own time
    worker_query_s: float | None = None  # the worker's poll (None: Prefect's 10 s)
    training: tuple[str, ...] = ()  # params.yaml overrides of the trainings (none: as shipped)
    # The last episode goes on past episode_s, up to this long, until the retrained model has
    # answered for settle_s (a loaded machine trains slower): None, a fixed length.
    episode_cap_s: float | None = None
    settle_s: float = 0.0


# 20 images/s: the window is 20 s of traffic; 150 s of delay lets ~1,500 labels accrue.
FULL = Pace(
    warm_up_s=180.0,
    episode_s=420.0,
    monitor_cycle_s=60.0,
    images_per_request=10,
    retrain_delay_s=150.0,
    monitor_window=400,
    reference_rows=1000,
    detection_limit_s=150.0,
)
# The test suite's soak (tests/integration/test_soak.py): one episode, over once the retrained
# model has answered for 30 s (about 2.5 minutes on an idle 2-core machine, 8 at most).
# Monitoring every 15 s and 80 images/s, so the window fills in 5 s and 30 s of delay still
# brings ~1,200 labels; 8 epochs (the CNN scores 0.98 on the digits after 12) train in a
# fraction of the shipped 30's time.
QUICK = Pace(
    warm_up_s=30.0,  # two monitoring cycles: the first verdicts say ok
    episode_s=120.0,
    monitor_cycle_s=15.0,
    images_per_request=40,
    retrain_delay_s=30.0,
    monitor_window=400,
    reference_rows=1000,
    worker_query_s=2.0,
    training=("train.epochs=8",),
    # the monitor's run takes ~15 s on an idle 2-core machine, a minute under heavy load
    detection_limit_s=90.0,
    episode_cap_s=480.0,
    settle_s=30.0,  # two monitoring cycles: a verdict on the retrained model, 100+ labels
)


def drifted(images: np.ndarray, population: str, rng: np.random.Generator) -> np.ndarray:
    """``images`` (N, 8, 8) uint8 as ``population`` draws them, each with its own strength."""
    from scipy.ndimage import grey_dilation

    pixels = images.astype(np.float32)
    if population == "clean":
        return images
    if population == "low-contrast":
        scale = rng.uniform(0.25, 0.45, size=(len(images), 1, 1))
        offset = rng.uniform(50, 110, size=(len(images), 1, 1))
        pixels = pixels * scale + offset
    elif population == "thick-strokes":
        pixels = np.stack([grey_dilation(image, size=(2, 2)) for image in pixels])
        pixels = pixels * rng.uniform(0.8, 1.0, size=(len(images), 1, 1))
    elif population == "inverted":
        pixels = (255 - pixels) * rng.uniform(0.8, 1.0, size=(len(images), 1, 1))
    else:
        raise ValueError(f"unknown population {population!r}")
    return np.clip(pixels, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Phase:
    population: str
    start_s: float  # since the traffic started
    end_s: float


def plan(minutes: float, pace: Pace) -> list[Phase]:
    """Clean warm-up, then as many episodes of at least ``pace.episode_s`` as fit, one
    population each."""
    total = minutes * 60
    episodes = max(1, int((total - pace.warm_up_s) // pace.episode_s))
    length = max(pace.episode_s, (total - pace.warm_up_s) / episodes)
    phases = [Phase("clean", 0.0, pace.warm_up_s)]
    for index in range(episodes):
        start = pace.warm_up_s + index * length
        phases.append(Phase(POPULATIONS[index % len(POPULATIONS)], start, start + length))
    return phases


@dataclass
class Answer:
    """One image's prediction: when, from which population and version, right or not."""

    at: float  # time.time()
    population: str
    version: int
    correct: bool
    labelled: bool


@dataclass
class Traffic:
    """What the generator sent and what came back."""

    answers: list[Answer] = field(default_factory=list)
    predictions_sent: int = 0
    predictions_answered: int = 0
    feedback_sent: int = 0
    feedback_stored: int = 0
    errors: list[str] = field(default_factory=list)
    ended_s: float = 0.0  # seconds from the start to the last request


def generate(
    url: str,
    phases: list[Phase],
    started: float,
    pool: tuple[np.ndarray, np.ndarray],
    stop,
    pace: Pace,
) -> Traffic:
    """Send the phases' traffic until the last phase ends (or ``stop`` is set); the last one
    goes on while ``pace`` says it may not be settled yet (``traffic.ended_s``: when it ended)."""
    images, labels = pool
    rng = np.random.default_rng(0)
    traffic = Traffic()
    last_report = 0.0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            now = time.time() - started
            phase = next((p for p in phases if p.start_s <= now < p.end_s), None)
            if phase is None and not settled(traffic, phases[-1], started, pace):
                phase = phases[-1]
            if phase is None:
                break
            traffic.ended_s = now
            pick = rng.integers(0, len(images), pace.images_per_request)
            batch = drifted(images[pick], phase.population, rng)
            truth = labels[pick]
            traffic.predictions_sent += len(batch)
            try:
                answer = client.post(f"{url}/predict", json={"images": batch.tolist()})
                answer.raise_for_status()
                body = answer.json()
                traffic.predictions_answered += len(batch)
                labelled = rng.random(len(batch)) < LABELLED_SHARE
                items = [
                    {"prediction_id": pid, "label": int(label)}
                    for pid, label, chosen in zip(
                        body["prediction_ids"], truth, labelled, strict=True
                    )
                    if chosen
                ]
                at = time.time()
                for prediction, label, chosen in zip(
                    body["predictions"], truth, labelled, strict=True
                ):
                    traffic.answers.append(
                        Answer(
                            at,
                            phase.population,
                            int(body["model_version"]),
                            prediction["class_index"] == int(label),
                            bool(chosen),
                        )
                    )
                if items:
                    traffic.feedback_sent += len(items)
                    stored = client.post(f"{url}/feedback", json={"items": items})
                    if stored.status_code == 200:
                        traffic.feedback_stored += len(items)
                    else:
                        traffic.errors.append(f"feedback {stored.status_code}: {stored.text}")
            except httpx.HTTPError as error:
                traffic.errors.append(f"predict: {error}")
            if now - last_report >= 30:
                last_report = now
                recent = [a for a in traffic.answers[-600:] if a.labelled]
                accuracy = np.mean([a.correct for a in recent]) if recent else float("nan")
                say(
                    f"  t={now:5.0f}s {phase.population:<13} served v{traffic.answers[-1].version}"
                    f" sent {traffic.predictions_sent} labelled accuracy (last 30 s) "
                    f"{accuracy:.3f}"
                    if traffic.answers
                    else f"  t={now:5.0f}s {phase.population}: no answer yet"
                )
            time.sleep(REQUEST_EVERY_S)
    return traffic


def settled(traffic: Traffic, last: Phase, started: float, pace: Pace) -> bool:
    """Whether the last episode may end: its retrained model has answered for
    ``pace.settle_s``, or ``pace.episode_cap_s`` is over (or the pace has a fixed length)."""
    now = time.time()
    if pace.episode_cap_s is None or now - started >= last.start_s + pace.episode_cap_s:
        return True
    answers = [a for a in traffic.answers if a.population == last.population]
    newer = [a for a in answers if a.version > answers[0].version] if answers else []
    return bool(newer) and now - newer[0].at >= pace.settle_s


class Background:
    """A command in a session of its own, its output in a file; stopped with its group."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as output:
            self.process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def peak_rss_mb(self) -> float | None:
        status = Path(f"/proc/{self.process.pid}/status")
        if not status.is_file():
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self, how: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, how)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def copy_workspace(target: Path) -> Path:
    """This repository's files as git would ship them (untracked ones too), as the tests'
    project template takes them, without the tests and the benchmarks."""
    from tests.helpers import copy_shipped_files

    return copy_shipped_files(target, leave_out=("tests/", "bench/"))


def command(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result.stdout + result.stderr


def set_params(workspace: Path, overrides: list[str], env: dict[str, str]) -> None:
    """params.yaml through the project's own writer (as `mlcycle run --set` writes it)."""
    code = (
        "import sys; from pathlib import Path; from tasks.core.config import apply_params, "
        "load_params; file = Path('params.yaml'); "
        "apply_params(load_params(file, overrides=sys.argv[1:]), file)"
    )
    command([sys.executable, "-c", code, *overrides], workspace, env)


def wait_ready(url: str, process: Background, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.process.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} never became ready:\n{process.log.read_text()[-3000:]}")


def verdict_events(server_url: str) -> list[dict[str, Any]]:
    """Every mlcycle.monitor.* event the server stored, oldest first."""
    events: list[dict[str, Any]] = []
    response = httpx.post(
        f"{server_url}/events/filter",
        json={"filter": {"event": {"prefix": ["mlcycle.monitor."]}, "order": "ASC"}, "limit": 50},
        timeout=30,
    )
    while True:
        response.raise_for_status()
        page = response.json()
        events += page["events"]
        if not page.get("next_page"):
            return events
        response = httpx.get(page["next_page"], timeout=30)


def training_runs(server_url: str) -> list[Any]:
    """Every flow run of the training flow (the first `mlcycle run` and the triggered ones)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with SyncPrefectClient(server_url) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["training-pipeline"])), limit=200
        )


def overlapping(runs: list[Any]) -> int:
    """Pairs of training runs whose run times overlap."""
    spans = sorted(
        (
            run.start_time.timestamp(),
            (run.end_time or datetime.now(run.start_time.tzinfo)).timestamp(),
        )
        for run in runs
        if run.start_time
    )
    return sum(
        1 for index, (_, end) in enumerate(spans) for start, _ in spans[index + 1 :] if start < end
    )


def accuracy(answers: list[Answer]) -> float | None:
    labelled = [answer.correct for answer in answers if answer.labelled]
    return round(float(np.mean(labelled)), 4) if labelled else None


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def episode_figures(
    phase: Phase, started: float, traffic: Traffic, events: list[dict], runs: list[Any]
) -> dict[str, Any]:
    """What happened in one episode, in seconds from its onset."""
    onset, end = started + phase.start_s, started + phase.end_s
    answers = [a for a in traffic.answers if a.population == phase.population and onset <= a.at]
    served_at_onset = answers[0].version if answers else None
    newer = [a for a in answers if served_at_onset is not None and a.version > served_at_onset]
    detections = [
        event
        for event in events
        if event["event"] == "mlcycle.monitor.drift"
        and onset <= timestamp(event["occurred"]) < end
        and (event["payload"].get("logged_from") or 0) >= onset  # rows of this population only
    ]
    triggered = sorted(
        (
            run
            for run in runs
            if run.created_by
            and run.created_by.type == "AUTOMATION"
            and onset <= run.created.timestamp() < end
        ),
        key=lambda run: run.created,
    )
    before = [a for a in answers if a.version == served_at_onset]
    return {
        "population": phase.population,
        "onset_s": phase.start_s,
        "length_s": phase.end_s - phase.start_s,
        "detected_s": round(timestamp(detections[0]["occurred"]) - onset, 1)
        if detections
        else None,
        "training_started_s": round(triggered[0].start_time.timestamp() - onset, 1)
        if triggered and triggered[0].start_time
        else None,
        "served_s": round(newer[0].at - onset, 1) if newer else None,
        "served_version_before": served_at_onset,
        "served_version_after": newer[-1].version if newer else None,
        "accuracy_before": accuracy(before),
        "accuracy_after": accuracy(newer),
        "labelled_after": sum(a.labelled for a in newer),
        "trainings": len(triggered),
        # Drift verdicts on the retrained model: none, when its monitoring reference is the
        # population it was retrained on. (A monitor run that began before the switch judges
        # the model it found then, and may say drift just after the switch: not counted.)
        "drift_after_served": sum(
            1
            for event in events
            if event["event"] == "mlcycle.monitor.drift"
            and newer
            and event["resource"].get("mlcycle.model.version") == str(newer[-1].version)
            and newer[0].at < timestamp(event["occurred"]) < end
        ),
        "training_states": [run.state_type.value if run.state_type else None for run in triggered],
        "training_reasons": [run.parameters.get("reason") for run in triggered],
    }


def log_counts(workspace: Path) -> tuple[int, int]:
    """(predictions, labelled predictions) in the serving app's prediction log."""
    with sqlite3.connect(workspace / "data" / "serving" / "predictions.sqlite") as connection:
        logged = connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        labelled = connection.execute(
            "SELECT COUNT(*) FROM predictions WHERE label_index IS NOT NULL"
        ).fetchone()[0]
    return logged, labelled


def server_errors(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "| ERROR" in line or " ERROR " in line]


def checks(figures: dict[str, Any], pace: Pace) -> list[dict[str, Any]]:
    """Each target, met or missed."""
    found = []
    clean = figures["clean_accuracy"]
    for index, episode in enumerate(figures["episodes"], 1):
        detected = episode["detected_s"]
        found.append(
            {
                "figure": f"episode {index} ({episode['population']}): detection",
                "measured": detected,
                "target": f"<= {pace.detection_limit_s:g} s",
                "passed": detected is not None and detected <= pace.detection_limit_s,
            }
        )
        found.append(
            {
                "figure": f"episode {index}: trainings",
                "measured": episode["trainings"],
                "target": "1",
                "passed": episode["trainings"] == 1,
            }
        )
        after = episode["accuracy_after"]
        found.append(
            {
                "figure": f"episode {index}: live accuracy after one retrain",
                "measured": after,
                "target": f">= clean {clean} - {MAX_ACCURACY_GAP}",
                "passed": after is not None
                and clean is not None
                and episode["labelled_after"] >= MIN_AFTER_SAMPLES
                and after >= clean - MAX_ACCURACY_GAP,
            }
        )
    for name, sent, kept in (
        ("predictions logged", "predictions_sent", "predictions_logged"),
        ("feedback stored", "feedback_sent", "feedback_stored"),
    ):
        found.append(
            {
                "figure": name,
                "measured": f"{figures[kept]} of {figures[sent]}",
                "target": "all",
                "passed": figures[kept] == figures[sent],
            }
        )
    for name in ("overlapping_trainings", "server_errors"):
        found.append(
            {"figure": name, "measured": figures[name], "target": "0", "passed": not figures[name]}
        )
    return found


def quicken_monitoring(server_url: str, every_s: float) -> None:
    """monitoring/hourly every ``every_s`` seconds, set on the server as the UI's schedule
    editor sets it: a pace params.yaml cannot say (its crons count minutes)."""
    from datetime import timedelta

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.schedules import IntervalSchedule

    with SyncPrefectClient(server_url) as client:
        deployment = client.read_deployment_by_name("monitoring/hourly")
        [schedule] = deployment.schedules
        client.update_deployment_schedule(
            deployment.id,
            schedule.id,
            schedule=IntervalSchedule(interval=timedelta(seconds=every_s)),
        )


def prefect_database(choice: str) -> tuple[dict[str, str], Any]:
    """The Prefect server's database settings, and the PostgreSQL cluster to stop (or None).
    ``auto``: PostgreSQL when its server binaries are here (Prefect's choice for a server
    under load: on SQLite, a busy 2-core machine logs "database is locked"), else SQLite."""
    from tasks.core.postgres import PostgresUnavailable, server_tools, start_cluster

    if choice == "sqlite" or (choice == "auto" and server_tools() is None):
        return {}, None
    try:
        cluster = start_cluster(
            Path(tempfile.mkdtemp(prefix="mlcycle-soak-postgres-")), free_port()
        )
    except PostgresUnavailable as error:
        if choice == "postgresql":
            raise
        say(f"soak: {error}; the Prefect server runs on SQLite")
        return {}, None
    cluster.create_database("prefect")
    url = cluster.url("prefect", driver="asyncpg")
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}, cluster


def soak(minutes: float, root: Path, pace: Pace, database: str = "auto") -> dict[str, Any]:
    workspace = copy_workspace(root / "project")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(workspace),  # the copy's code, never this working tree's
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "GIT_AUTHOR_NAME": "soak",
        "GIT_AUTHOR_EMAIL": "soak@mlcycle.local",
        "GIT_COMMITTER_NAME": "soak",
        "GIT_COMMITTER_EMAIL": "soak@mlcycle.local",
    }
    if pace.worker_query_s is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = f"{pace.worker_query_s:g}"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    phases = plan(minutes, pace)
    episode_s = phases[1].end_s - phases[1].start_s
    longest_s = max(episode_s, pace.episode_cap_s or 0.0)  # an episode may go on this long
    set_params(
        workspace,
        [
            "collect.feedback=true",
            "schedule.monitor_cron=* * * * *",
            f"monitor.window={pace.monitor_window}",
            # One training per episode: the window outlasts the delay, the training and the
            # alias's move, and ends two monitoring cycles before the next episode's onset.
            f"monitor.cooldown_hours={(longest_s - 2 * pace.monitor_cycle_s) / 3600:.6f}",
            f"monitor.retrain_delay_minutes={pace.retrain_delay_s / 60:g}",
            f"evaluate.reference_rows={pace.reference_rows}",
            f"serve.port={port}",
            "serve.poll_seconds=2",
            *pace.training,
        ],
        env,
    )
    command(["git", "init", "-q"], workspace, env)
    command(["git", "add", "-A"], workspace, env)
    command(["git", "commit", "-qm", "soak workspace"], workspace, env)
    processes: list[Background] = []
    settings, cluster = prefect_database(database)
    server = PrefectServer(root / "prefect", **settings)
    figures: dict[str, Any] = {
        "minutes": minutes,
        "phases": [vars(p) for p in phases],
        "prefect_database": "postgresql" if cluster else "sqlite",
    }
    try:
        server.start()
        env |= {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.home)}
        say("soak: the first champion (`mlcycle run`) ...")
        started = time.perf_counter()
        command([str(BIN / "mlcycle"), "run"], workspace, env)
        figures["first_run_s"] = round(time.perf_counter() - started, 1)
        say(command([str(BIN / "mlcycle"), "deployments", "apply"], workspace, env).strip())
        if pace.monitor_cycle_s != 60:
            quicken_monitoring(server.url, pace.monitor_cycle_s)
        serving = Background([str(BIN / "mlcycle"), "serve"], workspace, env, root / "serve.log")
        processes.append(serving)
        processes.append(
            Background([str(BIN / "mlcycle"), "worker"], workspace, env, root / "worker.log")
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, serving)
        from sklearn.datasets import load_digits

        from tasks.stages.collecting.digits import digit_pixels

        digits = load_digits()
        pool = (digit_pixels(digits.images)[..., 0], digits.target)
        say(
            f"soak: traffic for {minutes:g} min: "
            + ", ".join(f"{p.population} from {p.start_s:.0f} s" for p in phases)
        )
        stop = threading.Event()
        began = time.time()
        traffic = generate(url, phases, began, pool, stop, pace)
        phases[-1] = replace(phases[-1], end_s=max(phases[-1].end_s, traffic.ended_s))
        figures["phases"] = [vars(p) for p in phases]
        figures["serving_peak_rss_mb"] = serving.peak_rss_mb()
        time.sleep(3)  # the log's writer flushes every 0.5 s
        events = verdict_events(server.url)
        runs = training_runs(server.url)
        clean = [a for a in traffic.answers if a.population == "clean"]
        logged, labelled = log_counts(workspace)
        figures.update(
            {
                "clean_accuracy": accuracy(clean),
                "episodes": [
                    episode_figures(phase, began, traffic, events, runs) for phase in phases[1:]
                ],
                "verdicts": [
                    [round(timestamp(e["occurred"]) - began, 1), e["event"].rsplit(".", 1)[1]]
                    for e in events
                    if timestamp(e["occurred"]) >= began
                ],
                "predictions_sent": traffic.predictions_sent,
                "predictions_answered": traffic.predictions_answered,
                "predictions_logged": logged,
                "feedback_sent": traffic.feedback_sent,
                "feedback_stored": labelled,
                "feedback_accepted": traffic.feedback_stored,
                "request_errors": traffic.errors[:20],
                "trainings_started": sum(1 for run in runs if run.start_time),
                "overlapping_trainings": overlapping(runs),
                "server_errors": len(server_errors(server.home / "server.log")),
                "server_error_lines": server_errors(server.home / "server.log")[:10],
            }
        )
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGINT)
        server.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, help="traffic time (default 24; --quick: one episode)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the test suite's pace: monitoring every 15 s, one episode (2.5 to 8 minutes)",
    )
    parser.add_argument("--json", type=Path, help="where the figures go")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs)")
    parser.add_argument(
        "--prefect-db",
        choices=("auto", "postgresql", "sqlite"),
        default="auto",
        help="the Prefect server's database (auto: PostgreSQL when installed)",
    )
    args = parser.parse_args()
    pace = QUICK if args.quick else FULL
    shortest = (pace.warm_up_s + pace.episode_s) / 60
    minutes = args.minutes or (shortest if args.quick else 24.0)
    if minutes < shortest:
        parser.error(f"--minutes must leave room for one episode: at least {shortest:g}")
    sys.path.insert(0, str(REPO))
    root = args.keep or Path(tempfile.mkdtemp(prefix="mlcycle-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        figures = soak(minutes, root, pace, args.prefect_db)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    figures["date"] = date.today().isoformat()
    figures["machine"] = machine_facts("cpu")
    figures["pace"] = vars(pace)
    figures["detection_limit_s"] = pace.detection_limit_s
    figures["checks"] = checks(figures, pace)
    out = args.json or REPO / "bench" / "results" / (
        f"soak-{figures['date']}-{machine_slug(figures['machine'])}.json"
    )
    write_figures(figures, "soak", out)
    say(
        "\n| episode | population | detected s | training s | served s | accuracy before "
        "| after | trainings | drift verdicts after |"
    )
    say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, episode in enumerate(figures["episodes"], 1):
        say(
            f"| {index} | {episode['population']} | {episode['detected_s']} | "
            f"{episode['training_started_s']} | {episode['served_s']} | "
            f"{episode['accuracy_before']} | {episode['accuracy_after']} | "
            f"{episode['trainings']} | {episode['drift_after_served']} |"
        )
    say(
        f"clean accuracy {figures['clean_accuracy']}; predictions {figures['predictions_logged']}"
        f" logged of {figures['predictions_sent']} sent; feedback {figures['feedback_stored']} "
        f"stored of {figures['feedback_sent']} sent; overlapping trainings "
        f"{figures['overlapping_trainings']}; server ERROR lines {figures['server_errors']}; "
        f"serving peak {figures['serving_peak_rss_mb']} MB; Prefect server on "
        f"{figures['prefect_database']}"
    )
    for check in figures["checks"]:
        say(
            f"  {verdict(check['passed'])} {check['figure']}: {check['measured']} "
            f"({check['target']})"
        )
    return 0 if all(check["passed"] for check in figures["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())

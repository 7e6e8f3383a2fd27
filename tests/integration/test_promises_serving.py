"""Promises of docs/guide/serving.md, each watched from outside as a user would: `mlcycle serve`
as a real process in a clone that ran the pipeline (champion v1) and registered a second model
the gate did not promote (v2), real sockets, a real write limit, the real registry.

- it binds to loopback unless `serve.host` (or `--host`) says otherwise;
- `/metadata` shows the DVC hashes of the data and the git commit the model came from;
- records the prediction log could not write are counted in `/metrics`;
- `mlcycle promote` and `mlcycle rollback` ask the running app to reload at once;
- a version that fails to load is tried again only every 30 polls, the old one serving meanwhile.
"""

from __future__ import annotations

import hashlib
import re
import resource
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.core.config import apply_params, load_params
from tests.helpers import free_port
from tests.integration.helpers import ServedApp, copy_project, mlcycle, run, serving, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NAME = "mlcycle-classifier"


def set_params(project: Path, *overrides: str) -> None:
    """Change ``params.yaml`` as ``mlcycle run --set`` would, without running anything."""
    path = project / "params.yaml"
    apply_params(load_params(path, overrides=list(overrides)), path)


@pytest.fixture(scope="module")
def project(ran_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone with champion v1 and a v2 the gate kept out (it asks for more than any model
    can improve); its own serving port, since `promote` tells the app params.yaml names."""
    root = copy_project(ran_project, tmp_path_factory.mktemp("promises-serving"))
    mlcycle("run", "--set", "train.seed=2", "--set", "registry.min_improvement=1.0", cwd=root)
    set_params(root, f"serve.port={free_port()}")
    return root


@pytest.fixture(scope="module")
def images(project: Path) -> np.ndarray:
    return np.load(project / "data" / "raw" / "images.npy")[:8]


def registry(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_binds_to_loopback_unless_serve_host_says_otherwise(project):
    # 127.0.0.2 is this machine too, but not the address a loopback-only socket is bound to
    with serving(project) as app:
        assert answers(app.url)
        assert not answers(f"http://127.0.0.2:{app.port}")
        assert "reachable from other machines" not in app.output
    set_params(project, "serve.host=0.0.0.0")
    try:
        with serving(project) as app:
            assert answers(f"http://127.0.0.2:{app.port}")
            assert "binding to 0.0.0.0: reachable from other machines (serve.host)" in app.output
        with serving(project, "--host", "127.0.0.1") as app:  # the flag wins over params.yaml
            assert answers(app.url) and not answers(f"http://127.0.0.2:{app.port}")
    finally:
        set_params(project, "serve.host=127.0.0.1")


def dvc_lock_hashes(project: Path) -> dict[str, str]:
    """The md5 dvc.lock records for each stage output folder."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


def test_metadata_shows_the_dvc_hashes_and_the_commit_of_the_served_model(project):
    # the ran clone trained v1 at its first commit, then committed the dvc.lock it wrote
    trained_at = run(["git", "rev-parse", "HEAD~1"], cwd=project).stdout.strip()
    recorded = dvc_lock_hashes(project)
    with serving(project) as app:
        metadata = app.get("/metadata")
    assert metadata["version"] == "1"
    assert metadata["git_commit"] == trained_at
    assert metadata["data_version"] == {
        "data/raw": recorded["data/raw"],
        "data/processed": recorded["data/processed"],
    }


def dropped(app: ServedApp) -> float:
    metrics = httpx.get(f"{app.url}/metrics", timeout=30).text
    [value] = re.findall(r"^mlcycle_prediction_log_dropped (\S+)$", metrics, re.M)
    return float(value)


def predict(app: ServedApp, images: np.ndarray) -> None:
    answer = httpx.post(f"{app.url}/predict", json={"images": images.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text


def test_records_the_prediction_log_could_not_write_are_counted_in_metrics(project, images):
    with serving(project) as app:
        predict(app, images[:3])
        written = lambda: app.get("/metadata")["prediction_log"]["written"] == 3  # noqa: E731
        wait_until(written, "the first request's rows written", 30)
        assert dropped(app) == 0
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # The disk is full for the server: every write of its past the first byte fails.
        resource.prlimit(app.process.pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            predict(app, images[3:8])  # answered all the same
            wait_until(lambda: "prediction log write failed" in app.output, "a failed write", 30)
        finally:
            resource.prlimit(app.process.pid, resource.RLIMIT_FSIZE, (soft, hard))
        assert dropped(app) == 5  # the five images of the request the log lost
        assert app.get("/metadata")["prediction_log"]["dropped"] == 5


def test_promote_and_rollback_ask_the_running_app_to_reload(project):
    set_params(project, "serve.poll_seconds=3600")  # the app's own look at the alias: hourly
    try:
        with serving(project) as app:
            assert app.version() == "1"
            promoted = mlcycle("promote", "2", cwd=project).stdout
            assert f"the serving app at {app.url} is reloading" in promoted
            took = wait_until(lambda: app.version() == "2", "v2 served after promote", 60)
            rolled_back = mlcycle("rollback", cwd=project).stdout
            assert "rolled back from version 2 to version 1" in rolled_back
            assert f"the serving app at {app.url} is reloading" in rolled_back
            took = max(took, wait_until(lambda: app.version() == "1", "v1 after rollback", 60))
    finally:
        set_params(project, "serve.poll_seconds=10")
    print(f"served the moved alias {took:.1f} s after the command")


def weights_files(project: Path, version: str) -> list[Path]:
    """Every copy of ``version``'s model file in the artifact store (its md5 tag finds them)."""
    client = registry(project)
    details = client.get_model_version(NAME, version)
    run = client.get_run(details.run_id)
    md5 = details.tags.get("mlcycle.model_md5") or run.data.tags["mlcycle.model_md5"]
    location = client.get_experiment(run.info.experiment_id).artifact_location
    store = Path(unquote(urlparse(location).path))
    store = store if store.is_absolute() else project / store
    found = [
        path for path in store.rglob("*.pt") if hashlib.md5(path.read_bytes()).hexdigest() == md5
    ]
    assert found, (store, md5)
    return found


def test_a_version_that_failed_to_load_is_tried_again_every_30_polls(project):
    poll_s = 0.2
    set_params(project, f"serve.poll_seconds={poll_s}")
    v2_files = weights_files(project, "2")
    good, other = v2_files[0].read_bytes(), weights_files(project, "1")[0].read_bytes()

    def v2_file_holds(content: bytes) -> None:
        for path in v2_files:
            path.write_bytes(content)

    client = registry(project)
    try:
        with serving(project) as app:
            assert app.version() == "1"
            # another version's file copied over v2's, then the alias moved by hand
            v2_file_holds(other)
            client.set_registered_model_alias(NAME, "champion", "2")
            failures = re.compile(rf"could not load {NAME}@champion: .*version 2")

            def tries() -> list[float]:
                """When each failed load of v2 was logged."""
                return [at for at, line in list(app.timed) if failures.search(line)]

            def three_tries_v1_serving() -> bool:
                assert app.version() == "1"  # the old version serves on meanwhile
                return len(tries()) >= 3

            wait_until(three_tries_v1_serving, "three tries of v2", 240)
            gaps = [later - earlier for earlier, later in pairwise(tries())]
            # every poll would be 0.2 s apart; every 30 polls, 6 s (and the load's own time)
            retry_s = 30 * poll_s
            assert all(retry_s - 0.5 <= gap <= retry_s + 60 for gap in gaps), gaps
            assert "version 2" in (app.get("/metadata")["last_reload_error"] or "")
            v2_file_holds(good)  # the right file back: the next try serves it
            took = wait_until(lambda: app.version() == "2", "v2 served once fixed", retry_s + 60)
    finally:
        v2_file_holds(good)
        client.set_registered_model_alias(NAME, "champion", "1")
        set_params(project, "serve.poll_seconds=10")
    print(f"tries {[round(gap, 1) for gap in gaps]} s apart; v2 served {took:.1f} s after the fix")


def test_monitor_leaves_out_predictions_older_than_max_age_hours(project):
    import sqlite3

    rows = 250  # above monitor.min_rows (200)
    traffic = np.load(project / "data" / "raw" / "images.npy")[:rows]
    log = project / "data" / "serving" / "predictions.sqlite"
    log.unlink(missing_ok=True)
    with serving(project, "--prediction-log", str(log)) as app:
        for start in range(0, rows, 50):
            predict(app, traffic[start : start + 50])
        done = lambda: app.get("/metadata")["prediction_log"]["written"] == rows  # noqa: E731
        wait_until(done, "the traffic logged", 60)
    # two hours pass: every row is two hours old
    with sqlite3.connect(log) as connection:
        connection.execute("UPDATE predictions SET logged_at = logged_at - 7200")
    try:
        set_params(project, "monitor.max_age_hours=1")
        too_old = mlcycle("monitor", "--prediction-log", str(log), cwd=project, check=False)
        assert too_old.returncode == 4, too_old.stdout + too_old.stderr  # not enough data
        assert "newest 0 predictions of version 1" in too_old.stdout
        set_params(project, "monitor.max_age_hours=3")
        recent = mlcycle("monitor", "--prediction-log", str(log), cwd=project, check=False)
        assert recent.returncode in (0, 3), recent.stdout + recent.stderr  # judged
        assert f"newest {rows} predictions of version 1" in recent.stdout, recent.stdout
    finally:
        set_params(project, "monitor.max_age_hours=168")
    print(too_old.stdout[-600:], recent.stdout[-600:], sep="\n")

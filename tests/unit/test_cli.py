"""The `mlcycle` command line refuses what this machine cannot run before it writes anything,
and behaves in a pipe."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from flows.cli import main
from tasks.lifecycle.prefect_api import starting_prefect_api
from tasks.lifecycle.workspace import WorkspaceBusy, workspace_lock
from tests.helpers import REPO_ROOT, free_port, live_processes


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param(
            "train.device=cuda:7", r"train\.device is 'cuda:7' but \d+ CUDA device", id="no-gpu"
        ),
        pytest.param(
            "preprocess.image_size=100000",
            r"preprocess\.image_size=100000: 1797 images of 100000x100000x1 need about .* TiB "
            r"in memory, and this machine has .* available; choose a smaller image_size",
            id="memory",
        ),
        pytest.param(
            "collect.source=folder:/srv/digits",
            r"collect\.source folder: /srv/digits is outside data/external/",
            id="source-outside-external",
        ),
    ],
)
def test_a_run_this_machine_cannot_do_is_refused_before_params_yaml_changes(
    workspace, capsys, override, message
):
    before = (workspace / "params.yaml").read_bytes()
    assert main(["run", "--set", override]) == 1
    error = capsys.readouterr().err
    assert error.startswith("mlcycle: error: ")
    assert len(error.strip().splitlines()) == 1
    assert (workspace / "params.yaml").read_bytes() == before  # refused before it wrote
    assert re.search(message, error), error
    assert (workspace / "params.yaml").read_bytes() == before  # nothing written
    # the temporary Prefect API, started before the checks so it comes up while they run, is gone
    assert not prefect_servers_in(workspace)


def prefect_servers_in(folder: Path) -> list[str]:
    """Command lines of the `prefect server` processes running in ``folder``."""
    return [
        process.command
        for process in live_processes()
        if "prefect server" in process.command and process.cwd == folder
    ]


def test_the_temporary_prefect_api_answers_once_ready_returns_and_stops_after(
    workspace, monkeypatch
):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with starting_prefect_api() as api:
        assert prefect_servers_in(workspace)  # started at once, the block runs meanwhile
        url = api.ready()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert api.ready() == url  # waits once
    assert not prefect_servers_in(workspace)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


def test_queued_run_logs_reach_the_server_before_it_stops_even_from_an_event_loop(
    prefect_server,
):
    """What the temporary API does before it stops: send the run logs Prefect still queues.
    Called from a thread that runs an event loop (CI's warnings showed three tests do),
    Prefect's drain_all hands back a coroutine instead of waiting; the logs must be on the
    server when the call returns all the same."""
    import asyncio
    import gc
    import uuid
    import warnings
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.lifecycle.prefect_api import _send_queued_reports

    message = f"queued before the stop {uuid.uuid4()}"

    async def from_inside_a_loop() -> None:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            APILogWorker.instance().send(
                {
                    "name": "mlcycle.test",
                    "level": 20,
                    "message": message,
                    "timestamp": datetime.now(UTC).isoformat(),
                }
            )
            _send_queued_reports()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a thread of its own: the suite's main thread may run a loop already (Playwright's)
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, from_inside_a_loop()).result()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], caught
    logs = httpx.post(
        f"{prefect_server}/logs/filter", json={"sort": "TIMESTAMP_DESC", "limit": 200}, timeout=10
    )
    assert message in [log["message"] for log in logs.json()]


def test_a_port_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "99999"])
    assert exit_.value.code == 2
    assert "'99999' is not a port; expected 1-65535" in capsys.readouterr().err


def test_a_second_command_in_a_busy_workspace_names_the_holder(workspace, capsys):
    with workspace_lock("mlcycle run --set train.seed=33"):
        busy = pytest.raises(WorkspaceBusy, match=r"`mlcycle run --set train\.seed=33` \(pid ")
        with busy, workspace_lock("mlcycle run"):
            pass
        before = (workspace / "params.yaml").read_bytes()
        assert main(["run", "--set", "train.seed=34"]) == 1
        assert (workspace / "params.yaml").read_bytes() == before  # never touched
    assert "this workspace is busy: `mlcycle run --set train.seed=33`" in capsys.readouterr().err


def test_a_lock_left_by_a_killed_command_is_taken_over_and_named(workspace):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom tasks.lifecycle.workspace import workspace_lock\n"
            "with workspace_lock('mlcycle run --set train.seed=1'):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        cwd=workspace,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with workspace_lock("mlcycle run") as lock:
        assert lock.previous is not None
        assert lock.previous.pid == holder.pid
        assert lock.previous.command == "mlcycle run --set train.seed=1"
    with workspace_lock("mlcycle run") as lock:
        assert lock.previous is None  # released cleanly this time


def test_a_closed_pipe_ends_the_listing_quietly(tmp_path):
    """`mlcycle models | head -1` must not end in a BrokenPipeError traceback."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    script = (
        "import sys\nfrom flows import cli\n"
        "cli.commands.list_models = lambda args: [print('row', i) for i in range(100000)] "
        "and 0\nsys.exit(cli.main(['models']))"
    )
    result = subprocess.run(
        f'{sys.executable} -c "{script}" | head -1',
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout == "row 0\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_deployments_need_a_reachable_prefect_server(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deployments", "apply"]) == 1
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    assert main(["deployments", "apply"]) == 1
    assert "cannot be reached" in capsys.readouterr().err


def test_monitor_refuses_a_window_below_one(capsys):
    with pytest.raises(SystemExit):
        main(["monitor", "--window", "0"])
    assert "'0' is not a whole number of at least 1" in capsys.readouterr().err


def truncated_sqlite_file(path: Path) -> int:
    """A real SQLite file of many pages cut to its first 4 KiB; returns its full size."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE rows (text TEXT)")
        db.executemany("INSERT INTO rows VALUES (?)", [("x" * 500,)] * 200)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:4096])
    return size


def test_a_broken_mlflow_store_is_one_line_and_verbose_adds_the_traceback(workspace, capsys):
    size = truncated_sqlite_file(workspace / "mlflow.db")
    expected = (
        f"mlcycle: error: mlflow.db: not a usable MLflow database (file is truncated: 4,096 of "
        f"{size:,} bytes); restore it or point MLFLOW_TRACKING_URI elsewhere"
    )
    assert main(["models"]) == 1
    assert capsys.readouterr().err.strip() == expected

    assert main(["-v", "models"]) == 1
    error = capsys.readouterr().err
    assert "Traceback (most recent call last)" in error and "sqlite3.DatabaseError" in error
    assert error.strip().splitlines()[-1] == expected  # the line still ends it


def test_mlcycle_debug_shows_the_traceback_too(workspace, capsys, monkeypatch):
    truncated_sqlite_file(workspace / "mlflow.db")
    monkeypatch.setenv("MLCYCLE_DEBUG", "1")
    assert main(["models"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_failure_nobody_translated_keeps_its_traceback(workspace, monkeypatch):
    """A bug is not a user error: the edge re-raises it (the interpreter prints it)."""
    from flows.cli import commands

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(commands, "list_models", broken)
    with pytest.raises(ZeroDivisionError):
        main(["models"])


def test_an_error_line_hides_a_password_in_a_url(workspace, capsys, monkeypatch):
    url = f"http://alice:s3cr3t@127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    before = (workspace / "params.yaml").read_bytes()
    assert main(["run"]) == 1
    error = capsys.readouterr().err
    assert "s3cr3t" not in error, error
    assert error.startswith("mlcycle: error: PREFECT_API_URL http://alice:***@127.0.0.1:"), error
    assert len(error.strip().splitlines()) == 1
    assert (workspace / "params.yaml").read_bytes() == before  # refused before it wrote


def test_monitor_reads_the_prediction_log_it_is_given(workspace, capsys):
    """`mlcycle monitor --prediction-log PATH` hands PATH to the monitoring flow (which names
    a file that is not there before it looks for a served model)."""
    missing = workspace / "elsewhere.sqlite"
    assert main(["monitor", "--prediction-log", str(missing)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's first-use lines
    assert error.startswith(f"mlcycle: error: {missing}: no such prediction log"), error


def test_a_bug_raised_while_handling_a_user_error_keeps_its_traceback():
    """A KeyError raised in an `except PermissionError` block is a bug: it must not borrow the
    permission error's one line."""
    from tasks.core.errors import user_error

    try:
        try:
            raise PermissionError(13, "Permission denied", "/etc/shadow")
        except PermissionError:
            {}["missing"]
    except KeyError as bug:
        assert user_error(bug) is None
    try:
        raise RuntimeError("unexpected pos") from PermissionError(13, "Permission denied", "x")
    except RuntimeError as masked:  # torch's masking of an OSError is still translated
        assert "x: permission denied" in str(user_error(masked))


def test_a_busy_mlflow_store_is_not_called_damaged(tmp_path, monkeypatch):
    """'database is locked' (another writer) is not a broken mlflow.db: no translation, so the
    caller's own retry or error applies, not "restore it"."""
    import sqlite3

    from tasks.core.errors import user_error

    store = tmp_path / "mlflow.db"
    sqlite3.connect(store).execute("CREATE TABLE t (x)").connection.commit()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    writer = sqlite3.connect(store, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # another process writing: every reader is refused
    assert user_error(sqlite3.OperationalError("database is locked")) is None
    writer.execute("ROLLBACK")
    writer.close()
    store.write_bytes(store.read_bytes()[:50])  # now it is damaged
    assert "not a usable MLflow database" in str(
        user_error(sqlite3.DatabaseError("file is not a database"))
    )


@pytest.mark.parametrize(("status", "refused"), [(401, False), (200, False), (404, True)])
def test_an_api_behind_a_login_answers_and_a_wrong_path_is_named(status, refused):
    """PREFECT_API_URL's check: a 401 (Prefect Cloud, a proxy: this request has no key) is a
    server that answers; a 404 is no Prefect API at that path."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tasks.lifecycle.prefect_api import PrefectApiError, check_answers

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if refused:
            with pytest.raises(PrefectApiError, match=r"no Prefect API is there .* ends in /api"):
                check_answers(url)
        else:
            check_answers(url)
    finally:
        server.shutdown()


def test_run_help_lists_the_stages_of_dvc_yaml_in_order(capsys):
    """`mlcycle run --help` names what the flow runs (DATA_STAGES, the stages of dvc.yaml)."""
    import yaml

    from tasks.stages import DATA_STAGES

    dvc_stages = tuple(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    assert dvc_stages == DATA_STAGES
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"the DVC stages {', '.join(dvc_stages)} (each skipped when unchanged)" in help_text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert f"{', '.join(dvc_stages)}; register, deploy" in " ".join(capsys.readouterr().out.split())


def test_the_temporary_prefect_api_gets_no_view_at_link_and_a_real_server_keeps_it(monkeypatch):
    """Prefect builds its "View at ..." line with url_for: under the temporary server (stopped
    with the command) there is none; with PREFECT_API_URL its UI's link stays."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.urls import url_for

    from flows.cli.session import starting_flow_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with starting_flow_api() as api:
        assert api.url.startswith("http://127.0.0.1:")
        assert url_for("flow-run", obj_id="abc") is None

    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswerOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}), starting_flow_api():
            assert url_for("flow-run", obj_id="abc") == f"{url[:-4]}/runs/flow-run/abc"
    finally:
        server.shutdown()


class AnswerOk(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_flow_run_link_points_where_the_run_can_be_browsed_later(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli.session import flow_run_link

    # after a temporary server: the UI `make prefect-ui` (`prefect server start`) will serve
    assert flow_run_link("abc", temporary=True) == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert flow_run_link(None, temporary=True) == "http://127.0.0.1:4200/runs"
    # on PREFECT_API_URL's server: its UI, without the URL's password
    with temporary_settings(updates={PREFECT_API_URL: "http://alice:s3cr3t@prefect.lan/api"}):
        assert flow_run_link("abc", temporary=False) == "http://prefect.lan/runs/flow-run/abc"


def pipeline_outcome():
    from flows.training import PipelineOutcome
    from tasks.lifecycle.deploy import Deployment
    from tasks.lifecycle.pipeline import PipelineSummary
    from tasks.registry.gate import Registration

    summary = PipelineSummary(
        run_id="r1",
        run_url="http://127.0.0.1:5000/#/experiments/1/runs/r1",
        model="cnn",
        accuracy=0.98,
        macro_f1=0.97,
        baseline=None,
        stages_run=("train", "evaluate"),
        stages_skipped=("collect",),
        data_versions={},
    )
    registration = Registration("m", "2", True, "better", "2", {"accuracy": 0.98}, None)
    deployment = Deployment("none", "2", "http://127.0.0.1:8000", "no serving app")
    return PipelineOutcome(summary, registration, deployment)


def test_the_summary_links_the_flow_run_and_says_how_to_open_it(workspace):
    from flows.cli.formatting import format_outcome

    link = "http://127.0.0.1:4200/runs/flow-run/abc"
    after_temporary = format_outcome(pipeline_outcome(), link, temporary_prefect=True)
    assert f"  Prefect flow run: {link}\n" in after_temporary
    assert re.search(r"\n  make prefect-ui +# then open the flow run link above\n", after_temporary)
    assert "prefect server start" not in after_temporary  # telemetry errors without the switch
    on_a_server = format_outcome(pipeline_outcome(), link, temporary_prefect=False)
    assert f"  Prefect flow run: {link}\n" in on_a_server
    assert "make prefect-ui" not in on_a_server


def test_models_shows_each_versions_model_family():
    from flows.cli.formatting import format_versions
    from tasks.registry.versions import VersionRow

    def row(version: str, family: str) -> VersionRow:
        return VersionRow(
            version=version,
            aliases=("champion",) if version == "2" else (),
            created="2026-12-07 02:24",
            family=family,
            accuracy=0.98,
            macro_f1=None,
            check="passed",
            data="475df03336ca00",
            commit="7c932bd0ee1f00",
            decision="promoted to champion",
        )

    listing = format_versions("m", [row("2", "resnet"), row("1", "")])
    header, resnet, older = listing.splitlines()[1:]
    assert header.split() == [
        "version", "aliases", "model", "accuracy", "macro-F1", "check", "data", "commit",
        "created", "decision",
    ]  # fmt: skip
    assert resnet.split()[:5] == ["2", "champion", "resnet", "0.9800", "-"]
    assert older.split()[:3] == ["1", "-", "-"]  # registered before versions recorded it
    assert header.index("model") == resnet.index("resnet")  # the column lines up


EXIT_SCRIPT = """
import atexit, sys, threading, time
from flows.cli import commands, console_main
from tasks.lifecycle.prefect_api import ApiWatch

class Teardown:
    def __del__(self):
        print("teardown", flush=True)

kept_until_teardown = Teardown()
api_lost = sys.argv[1:] == ["--api-lost"]

def command(args):
    atexit.register(lambda: print("exit handler", flush=True))
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", flush=True))).start()
    if api_lost:
        ApiWatch.lost_message = "the Prefect API at http://127.0.0.1:1/api stopped answering"
    print("ran", flush=True)
    return 3

commands.list_models = command
sys.argv = ["mlcycle", "models"]
console_main()
"""


@pytest.mark.parametrize("api_lost", [False, True], ids=["finished", "api-lost"])
def test_the_console_script_exits_with_the_code_after_the_handlers_without_teardown(
    tmp_path, api_lost
):
    """`mlcycle` waits for its threads and runs the exit handlers registered while it ran (not
    those after its Prefect API was lost: they would retry it for minutes), exits with the
    command's code, and skips the interpreter's teardown (no module is freed)."""
    script = tmp_path / "mlcycle_exit.py"
    script.write_text(EXIT_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), *(["--api-lost"] if api_lost else [])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    if api_lost:
        assert result.stdout.splitlines() == ["ran"]
    else:
        assert result.stdout.splitlines() == ["ran", "thread done", "exit handler"]


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["bogus"], 2)])
def test_the_console_script_keeps_argparses_exit_codes(argv, code):
    script = "import sys; from flows.cli import console_main; console_main()"
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=REPO_ROOT, capture_output=True, timeout=120
    )
    assert result.returncode == code


def test_each_command_names_its_own_handler():
    """Dispatch is the parser's: every command sets a handler of flows.cli.commands."""
    from flows.cli import build_parser, commands

    parser = build_parser()
    chosen = {
        name: parser.parse_args([name, *extra]).func
        for name, extra in [
            ("run", []),
            ("register", []),
            ("models", []),
            ("promote", ["1"]),
            ("rollback", []),
            ("restore", ["1"]),
            ("serve", []),
            ("monitor", []),
            ("deployments", ["apply"]),
            ("worker", []),
            ("select-worker", []),
        ]
    }
    assert len(set(chosen.values())) == len(chosen)
    assert all(getattr(commands, func.__name__) is func for func in chosen.values())

"""The pieces that survive an outage, on their own: the API watch interrupts the watched block
and reports once; a registration that recovered a run left unregistered says so."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from flows.cli.formatting import format_registration
from tasks.lifecycle import prefect_api
from tasks.lifecycle.prefect_api import ApiWatch, PrefectApiLost, watching_api
from tasks.registry.gate import Registration
from tests.helpers import free_port


def test_a_lost_api_interrupts_the_watched_block_and_is_reported_once(monkeypatch):
    monkeypatch.setattr(prefect_api, "API_CHECK_EVERY_S", 0.1)
    monkeypatch.setattr(prefect_api, "API_LOST_AFTER_S", 0.3)
    monkeypatch.setattr(ApiWatch, "lost_message", None)  # process-wide: this test's alone
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    reported: list[str] = []
    settled: list[str] = []

    def settle(why: str) -> str:
        settled.append(why)
        return "what was lost"

    started = time.monotonic()
    with pytest.raises(PrefectApiLost), watching_api(url, settle, reported.append):
        time.sleep(30)  # a blocking call: the signal ends it
    assert time.monotonic() - started < 5
    assert reported == [f"{settled[0]}: what was lost"]
    assert settled[0].startswith(f"the Prefect API at {url} stopped answering (")
    assert prefect_api.api_lost()


def test_an_answering_api_leaves_the_block_alone(monkeypatch):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setattr(prefect_api, "API_CHECK_EVERY_S", 0.1)
    monkeypatch.setattr(prefect_api, "API_LOST_AFTER_S", 0.3)
    monkeypatch.setattr(ApiWatch, "lost_message", None)
    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api"
        with watching_api(url, str, pytest.fail):
            time.sleep(1)
    finally:
        server.shutdown()
    assert not prefect_api.api_lost()


def test_a_registration_that_recovered_a_run_says_so():
    registration = Registration(
        "m", "2", False, "not better", "1", {"accuracy": 0.9}, None, recovered="the API died"
    )
    first = format_registration(registration).splitlines()[0]
    assert first == (
        "  recovered: the run left evaluated but unregistered (the API died) is registered now: "
        "m version 2, not promoted"
    )

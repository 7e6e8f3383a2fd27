"""What a command runs under: the Prefect API its flows report to, the watch that ends it when
that API goes away, the workspace it holds alone, and where its flow run can be browsed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from flows.cli.formatting import error_line, say
from tasks.core.redaction import without_credentials
from tasks.lifecycle import workspace
from tasks.lifecycle.prefect_api import PrefectApi, starting_prefect_api, watching_api


@contextmanager
def watching(url: str, settle: Callable[[str], str]) -> Iterator[None]:
    """The command ends within a minute of its Prefect API going away, with one error line
    saying what was lost (``settle``); see ``tasks.lifecycle.prefect_api.watching_api``."""
    with watching_api(url, settle, error_line):
        yield


def settle_pipeline(since_ms: int) -> Callable[[str], str]:
    def settle(why: str) -> str:
        from tasks.lifecycle.settle import settle_runs_of_this_process

        return settle_runs_of_this_process(why, since_ms)

    return settle


def settle_registration(why: str) -> str:
    return "no alias moved unless the registration finished; `mlcycle register` completes it"


@contextmanager
def holding_workspace(command: str) -> Iterator[None]:
    """This workspace to ``command`` alone (see ``tasks.lifecycle.workspace``)."""
    with workspace.holding_workspace(command, say):
        yield


@contextmanager
def starting_flow_api() -> Iterator[PrefectApi]:
    """``starting_prefect_api``: the API this command's flows report to, maybe still coming up
    (call ``ready()`` before a flow). With the temporary one (no PREFECT_API_URL), Prefect's
    "View at http://127.0.0.1:<port>/..." lines are left out: that server stops with the
    command. The summary says where to browse the run afterwards."""
    with starting_prefect_api() as api, ExitStack() as links:
        if api.temporary:
            from tasks.core.console import without_flow_run_links

            links.enter_context(without_flow_run_links())
        yield api


def flow_run_link(flow_run_id: str | None, temporary: bool) -> str:
    """Where a flow run can be browsed: on PREFECT_API_URL's server, its UI; after a temporary
    server, the UI of `make prefect-ui`, which reads the same database (PREFECT_HOME)."""
    from prefect.settings import PREFECT_UI_URL

    from tasks.core.console import later_prefect_ui

    base = later_prefect_ui() if temporary else PREFECT_UI_URL.value() or ""
    runs = f"{without_credentials(base).rstrip('/')}/runs"
    return f"{runs}/flow-run/{flow_run_id}" if flow_run_id else runs

"""Console and run-log output: plain message lines for stages, the Prefect run logger inside
flows, one-line user errors for ``python -m`` entry points.

Every log record of a process that imports this module has its credentials masked
(``tasks.core.redaction``): a password in ``MLFLOW_TRACKING_URI`` or ``select.storage`` never
reaches the console, a log file or the Prefect run log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tasks.core.errors import user_error
from tasks.core.processes import die_with_parent
from tasks.core.redaction import install_log_redaction, redact, redact_value

install_log_redaction()  # before any logger of ours, Prefect's or MLflow's says anything


def configure_logging(level: int = logging.INFO) -> None:
    """Plain message lines: a stage's output is read on a console or inside the Prefect log.

    Our own ``mlcycle.*`` loggers speak at ``level``; libraries only when something is wrong,
    and Great Expectations (whose warnings are about its own plugin registry) only on errors.
    """
    install_log_redaction()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("mlcycle").setLevel(level)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


def run_logger(fallback: str) -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task (lines reach the UI), else ``fallback``
    (a test, a script, a plain ``dvc repro``)."""
    context = sys.modules.get("prefect.context")  # loaded by any process running a flow
    if context is None or not (context.FlowRunContext.get() or context.TaskRunContext.get()):
        # Outside a run, without importing Prefect's logging: that import alone costs a second
        # and re-configures logging (its setup replaces the root logger's handlers).
        return logging.getLogger(fallback)
    from prefect import get_run_logger

    return get_run_logger()


@contextmanager
def without_flow_run_links() -> Iterator[None]:
    """Flow runs in this block log no "View at <Prefect UI>/runs/flow-run/<id>" line.

    For a temporary Prefect server, stopped when the command ends: its link (a random port)
    would be dead by the time anyone follows it. Prefect builds the link from PREFECT_UI_URL,
    and an empty one means "no UI" (``prefect.utilities.urls.url_for`` returns None)."""
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_UI_URL: ""}):
        yield


def later_prefect_ui() -> str:
    """The UI ``prefect server start`` (``make prefect-ui``) serves, from Prefect's settings:
    it reads the database a temporary server wrote to (PREFECT_HOME), so its runs are there."""
    from prefect.settings import get_current_settings

    api = get_current_settings().server.api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::") else api.host
    return f"http://{host}:{api.port}"


def flow_without_secrets(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``prefect.flow(**options)`` whose runs record their parameters with credentials masked.

    Prefect stores a flow run's parameters (the whole of params.yaml for the pipeline) for its
    UI and API: ``select.storage``'s password must not go with them. The flow itself still
    gets the values as they are."""
    from prefect.flows import Flow

    class FlowWithoutSecrets(Flow):
        def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
            return redact_value(super().serialize_parameters(parameters))

    def decorate(fn: Callable[..., Any]) -> Any:
        return FlowWithoutSecrets(fn=fn, **options)

    return decorate


def stage_main(main: Callable[[], None]) -> None:
    """Run a ``python -m tasks.stages.<stage>`` entry point: a user error is one line, exit 1.

    The stage dies with the process that started it (``dvc repro``), so a killed run leaves no
    training behind."""
    die_with_parent()
    configure_logging()
    try:
        main()
    except Exception as error:
        known = user_error(error)  # a user error, or a library failure a user can fix
        if known is None:
            raise  # a bug: its traceback
        print(f"error: {redact(str(known))}", file=sys.stderr)
        raise SystemExit(1) from None

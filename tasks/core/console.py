"""Console and run-log output: plain message lines for stages, the Prefect run logger inside
flows, one-line user errors for ``python -m`` entry points.

Every log record of a process that imports this module has its credentials masked
(``tasks.core.redaction``): a password in ``MLFLOW_TRACKING_URI`` or ``select.storage`` never
reaches the console, a log file or the Prefect run log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
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
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(fallback)


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

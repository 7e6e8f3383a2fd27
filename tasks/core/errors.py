"""User errors: what a person can fix, reported in one line, never retried.

An ``MlcycleError`` is bad input, bad config or missing data; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any


class MlcycleError(Exception):
    """A problem the user can fix (bad input, bad config, missing data): reported in one line."""


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retrying cannot fix bad input or bad config."""
    return not isinstance(state.result(raise_on_failure=False), MlcycleError)


class _NoTracebackForUserErrors(logging.Filter):
    """A traceback explains a bug, not bad input: drop it for MlcycleError, keep the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MlcycleError):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_user_error_tracebacks(
    logger_names: Iterable[str] = ("prefect.flow_runs", "prefect.task_runs"),
) -> None:
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())

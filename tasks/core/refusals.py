"""A refused input: the field at fault, why, and the HTTP status it is answered with.

The serving app refuses request bodies with it, and the prediction log refuses labels with it
(unknown id, already labelled, not a class): both answer ``/feedback``, so they share one type.
"""

from __future__ import annotations

from http import HTTPStatus

from tasks.core.errors import MlcycleError

# The default refusal: a well-formed request whose input cannot be used.
UNPROCESSABLE = HTTPStatus.UNPROCESSABLE_ENTITY


class InputError(MlcycleError):
    """A request the app refuses: ``field`` names the part of the input at fault."""

    def __init__(self, field: str, reason: str, status: int = UNPROCESSABLE) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status

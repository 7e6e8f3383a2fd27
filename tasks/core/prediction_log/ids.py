"""Prediction ids: what ``/predict`` answers with, one per image, for ``/feedback``.

An id is 128 random bits as 32 lowercase hex digits. The id of a prediction that was not
logged (sampled out by serve.log_sample_rate, or dropped by a full queue) starts with
NOT_LOGGED instead: the id itself says so, for ever, without the app remembering it.
"""

from __future__ import annotations

import os
import re

NOT_LOGGED = "n"
ID_BYTES = 16  # 128 random bits
ID_DIGITS = 2 * ID_BYTES  # as hex
PREDICTION_ID = re.compile(
    rf"^(?:[0-9a-f]{{{ID_DIGITS}}}|{NOT_LOGGED}[0-9a-f]{{{ID_DIGITS - 1}}})$"
)


def new_ids(count: int) -> list[str]:
    """``count`` ids of logged predictions, from one system call."""
    digits = os.urandom(ID_BYTES * count).hex()
    return [digits[start : start + ID_DIGITS] for start in range(0, ID_DIGITS * count, ID_DIGITS)]


def not_logged_ids(count: int) -> list[str]:
    """``count`` ids of predictions that are not logged: they start with NOT_LOGGED."""
    return [NOT_LOGGED + one[1:] for one in new_ids(count)]

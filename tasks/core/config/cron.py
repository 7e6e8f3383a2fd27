"""Cron expressions as the Prefect schedules take them, checked without importing Prefect.

Every process that loads ``params.yaml`` checks the schedule section, and importing Prefect
for its schedule model cost each DVC stage a second of start-up. This grammar is a strict
subset of what Prefect's schedules accept (no ``L``, ``W``, ``#``, ``?`` or seconds field):
whatever passes here, the server accepts at deploy time. ``tests/unit/test_cron.py`` checks
that against Prefect's own model.
"""

from __future__ import annotations

import re

FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (lowest, highest, names for 1..12 or 0..6); Sunday is 0 or 7
BOUNDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, MONTHS), (0, 7, WEEKDAYS))
ITEM = re.compile(r"^(?P<start>\*|[a-z0-9]+)(?:-(?P<end>[a-z0-9]+))?(?:/(?P<step>[0-9]+))?$")


def cron_problem(expression: str) -> str | None:
    """What is wrong with a five-field cron expression (``"0 3 * * 1"``), or None."""
    fields = expression.split()
    if len(fields) != len(FIELD_NAMES):
        return f"{len(fields)} fields; expected {len(FIELD_NAMES)} ({' '.join(FIELD_NAMES)})"
    for name, text, bounds in zip(FIELD_NAMES, fields, BOUNDS, strict=True):
        for item in text.split(","):
            problem = _item_problem(item.lower(), *bounds)
            if problem:
                return f"{name} {text!r}: {problem}"
    return None


def _item_problem(item: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    match = ITEM.match(item)
    if not match:
        return f"{item!r} is not *, a value, a range a-b or either with a step /n"
    start, end, step = match["start"], match["end"], match["step"]
    if start == "*":
        if end is not None:
            return f"{item!r}: * takes no range"
    else:
        first = _value(start, low, high, names)
        last = first if end is None else _value(end, low, high, names)
        if first is None or last is None:
            return f"{item!r}: values run {low}-{high}" + (
                f" or {names[0]}-{names[-1]}" if names else ""
            )
        if end is None and step is not None:
            return f"{item!r}: a step needs * or a range before it"
        if first > last:
            return f"{item!r}: the range runs backwards"
    if step is not None and not 0 < int(step) <= high:
        return f"{item!r}: a step runs 1-{high}"
    return None


def _value(text: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        number = int(text)
        return number if low <= number <= high else None
    if text in names:
        return names.index(text) + (1 if low == 1 else 0)
    return None

"""The drift verdict's records: one ``Check`` per question asked of a window, and the
``DriftResult`` that gathers them into a decision (``drift``, ``no drift``, ``not enough data``)
with the flat numbers MLflow logs and the rows a table shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.core.errors import MlcycleError

DRIFT = "drift"
NO_DRIFT = "no drift"
NOT_ENOUGH_DATA = "not enough data"


class DriftInputError(MlcycleError):
    """A window that cannot be compared: wrong shapes, types or values, named by field."""


@dataclass(frozen=True)
class Check:
    """One question asked of the window. ``kind``: feature, input, prediction, confidence or
    accuracy. ``value`` is the ``statistic`` (a p-value, a share, an accuracy), None when the
    check could not be judged; ``decides`` is False for what only informs (single features feed
    the input check; the confidence test is there for the report)."""

    name: str
    kind: str
    statistic: str
    value: float | None
    threshold: float | None
    drifted: bool
    decides: bool
    method: str
    detail: str

    @property
    def metric_key(self) -> str:
        return f"{self.name}.{self.statistic}"


@dataclass(frozen=True)
class DriftResult:
    """``decision``: ``drift`` when any deciding check drifted, else ``no drift``; ``not enough
    data`` (and no checks) below ``monitor.min_rows``. ``drift_share``: the share of image
    features that drifted; ``live_accuracy``: None unless ``monitor.min_labels`` rows had
    labels."""

    decision: str
    rows: int
    checks: tuple[Check, ...]
    drift_share: float | None
    live_accuracy: float | None
    labelled: int

    @property
    def drifted(self) -> tuple[Check, ...]:
        """The checks that made the decision ``drift``."""
        return tuple(check for check in self.checks if check.decides and check.drifted)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per check, for a table (console, Prefect artifact)."""
        return [
            {
                "check": check.name,
                "kind": check.kind,
                "statistic": check.statistic,
                "value": check.value,
                "threshold": check.threshold,
                "drifted": check.drifted,
                "decides": check.decides,
                "method": check.method,
                "detail": check.detail,
            }
            for check in self.checks
        ]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: rows, labelled, drift (1/0, absent without a decision), and
        each check's statistic under ``<check>.<statistic>`` (``input.drift_share``,
        ``prediction.p_value``, ``feature.mean.p_value``, ``accuracy.live_accuracy`` ...)."""
        logged = {"rows": float(self.rows), "labelled": float(self.labelled)}
        if self.decision != NOT_ENOUGH_DATA:
            logged["drift"] = 1.0 if self.decision == DRIFT else 0.0
        logged |= {c.metric_key: float(c.value) for c in self.checks if c.value is not None}
        return logged

    def threshold_of(self, check_name: str) -> float:
        """The threshold the named check was judged with (``prediction``: the p-value,
        ``input``: the drift share), for a report drawn after the decision."""
        [threshold] = [check.threshold for check in self.checks if check.name == check_name]
        assert threshold is not None, f"{check_name} has no threshold"
        return threshold

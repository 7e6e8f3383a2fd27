"""What every route of one app shares (``app.state.serving``): the settings, the model holder,
the metrics, the prediction log and the request threads; and the model a request uses."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import anyio
from fastapi import Request

from tasks.core.config import ServeParams
from tasks.core.prediction_log.writer import PredictionLog
from tasks.core.refusals import InputError
from tasks.serving.metrics import ServingMetrics
from tasks.serving.model import ModelHolder, ServedModel


@dataclass(frozen=True)
class AppState:
    """What the handlers share: ``app.state.serving``."""

    name: str
    params: ServeParams
    holder: ModelHolder
    metrics: ServingMetrics
    prediction_log: PredictionLog | None
    body: type  # the /predict body model (inputs.predict_body)
    limiter: anyio.CapacityLimiter  # the request threads (serve.threads)


def serving(request: Request) -> AppState:
    return request.app.state.serving


def current_model(state: AppState) -> ServedModel:
    """The model this request will use to the end, or 503 saying why there is none. A reload
    may swap ``holder.current`` meanwhile: the request finishes on the model it took."""
    model = state.holder.current
    if model is None:
        raise InputError(
            "model", state.holder.last_error or "not loaded yet", HTTPStatus.SERVICE_UNAVAILABLE
        )
    return model

"""What machines read of the app: ``GET /health`` (alive), ``/ready`` (a model loaded),
``/metadata`` (the served version and the log's counts), ``/metrics`` (Prometheus), and
``POST /admin/reload`` (loopback clients only)."""

from __future__ import annotations

import threading
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tasks.core.refusals import InputError
from tasks.serving.openapi import ERROR_RESPONSES, FORBIDDEN_RESPONSE
from tasks.serving.state import AppState, current_model, serving

LOOPBACK = frozenset({"127.0.0.1", "::1"})
UNAVAILABLE = HTTPStatus.SERVICE_UNAVAILABLE


def add_routes(app: FastAPI, state: AppState) -> None:
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route(
        "/ready", ready, methods=["GET"], responses={UNAVAILABLE: ERROR_RESPONSES[UNAVAILABLE]}
    )
    app.add_api_route(
        "/metadata",
        metadata,
        methods=["GET"],
        responses={UNAVAILABLE: ERROR_RESPONSES[UNAVAILABLE]},
    )
    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        response_class=Response,
        responses={HTTPStatus.OK: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    app.add_api_route(
        "/admin/reload",
        reload,
        methods=["POST"],
        status_code=HTTPStatus.ACCEPTED,
        responses=FORBIDDEN_RESPONSE,
    )


async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


async def ready(request: Request) -> Response:
    """A model is loaded and served."""
    state = serving(request)
    model = state.holder.current
    body = {
        "ready": model is not None,
        "model_name": state.name,
        "version": model.version if model else None,
        "last_error": state.holder.last_error,
    }
    return JSONResponse(body, status_code=HTTPStatus.OK if model else UNAVAILABLE)


async def metadata(request: Request) -> Response:
    """The served version: name, version, alias, data version, params, trained at; and the
    prediction log's counts (written, dropped, and a file removed under it: recreated, lost)."""
    state = serving(request)
    model = current_model(state)
    log_status = state.prediction_log.status() if state.prediction_log is not None else None
    return JSONResponse(
        {
            **model.metadata,
            "last_reload_error": state.holder.last_error,
            "prediction_log": log_status,
        }
    )


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST

    state = serving(request)
    model = state.holder.current
    if model is not None:
        state.metrics.model_version.labels(state.name).set(float(model.version))
    if state.prediction_log is not None:
        state.metrics.log_dropped.set(state.prediction_log.dropped)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def reload(request: Request) -> dict[str, Any]:
    """Load the version now holding the alias (loopback clients only); poll /ready."""
    holder = serving(request).holder
    if (request.client.host if request.client else "") not in LOOPBACK:
        raise InputError(
            "client", "reload is accepted from this machine only", HTTPStatus.FORBIDDEN
        )
    threading.Thread(target=holder.reload, name="model-reload", daemon=True).start()
    return {"reloading": True, "serving": holder.current.version if holder.current else None}

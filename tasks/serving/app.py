"""The serving app: the champion model over HTTP (FastAPI on uvicorn), following its alias.

- ``POST /predict``: ``{"images": [...]}``, each image as nested lists of 0-255 pixel values in
  the raw data's shape (as ``data/raw`` stores them) or a base64 PNG/JPEG string.
- ``POST /predict/image``: one uploaded PNG/JPEG file.
- ``POST /feedback``: the true class of a served prediction, by the ``prediction_ids`` every
  predict answer carries (one per image); stored beside the logged prediction for training.
- ``GET /health`` (alive), ``/ready`` (model loaded), ``/metadata``, ``/metrics`` (Prometheus),
  ``/`` (a page to draw or upload a digit), ``/docs`` (the API's docs, served offline),
  ``POST /admin/reload`` (loopback clients only).

Every input goes through the training code's own preprocessing (``tasks.core.images``), with
the settings recorded on the model version, and the normalisation statistics live inside the
model: nothing is re-typed here. Predictions are logged off the request thread to
``data/serving/predictions.sqlite`` for monitoring.

This module assembles the app (the routes live in ``tasks.serving.routes``, one module per
job: add a group to ROUTES to serve another protocol) and runs it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

from tasks.core.config import ServeParams
from tasks.core.paths import PREDICTION_LOG
from tasks.core.prediction_log.writer import PredictionLog
from tasks.serving.inputs import predict_body
from tasks.serving.metrics import LimitAndMeasure, PredictionLogCollector, ServingMetrics
from tasks.serving.model import ModelHolder, log
from tasks.serving.pages import add_pages
from tasks.serving.problems import add_problem_handlers
from tasks.serving.routes import feedback, predict, status
from tasks.serving.state import AppState

# The route groups, in the order the API docs list them; each adds its routes for the state.
ROUTES: tuple[Callable[[FastAPI, AppState], None], ...] = (
    predict.add_routes,
    feedback.add_routes,
    status.add_routes,
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    params: ServeParams,
    name: str,
    holder: ModelHolder | None = None,
    prediction_log: PredictionLog | None = None,
) -> FastAPI:
    """The serving app: loads the alias's version at start (in the background, so ``/health``
    answers at once) and follows the alias every ``params.poll_seconds``."""
    state = app_state(params, name, holder or ModelHolder(name, params.alias), prediction_log)
    return assemble(state, following_lifespan(state))


def create_fixed_app(
    params: ServeParams,
    name: str,
    holder: ModelHolder,
    prediction_log: PredictionLog | None = None,
) -> FastAPI:
    """An app that serves what ``holder`` holds: it loads nothing and follows no alias (tests,
    and the API docs' own check)."""
    state = app_state(params, name, holder, prediction_log)
    return assemble(state, logging_lifespan(state))


def app_state(
    params: ServeParams, name: str, holder: ModelHolder, prediction_log: PredictionLog | None
) -> AppState:
    return AppState(
        name=name,
        params=params,
        holder=holder,
        metrics=ServingMetrics(),
        prediction_log=prediction_log,
        body=predict_body(params.max_batch),
        limiter=anyio.CapacityLimiter(params.threads),
    )


def assemble(state: AppState, lifespan: Lifespan) -> FastAPI:
    """The FastAPI app of ``state``: the body limit and metrics, one JSON line per refusal,
    the ROUTES, then the pages (the drawing page, ``/docs``)."""
    app = FastAPI(
        title="mlcycle serving",
        description=f"Predictions from `models:/{state.name}@{state.params.alias}`.",
        lifespan=lifespan,
        docs_url=None,  # pages.add_pages serves /docs from local assets
        redoc_url=None,  # ReDoc's bundle always fetches its logo from the internet
    )
    app.state.serving = state
    if state.prediction_log is not None:
        state.metrics.registry.register(PredictionLogCollector(state.prediction_log))
    app.add_middleware(
        LimitAndMeasure, max_bytes=state.params.max_body_bytes, metrics=state.metrics
    )
    add_problem_handlers(app)
    for add_routes in ROUTES:
        add_routes(app, state)
    add_pages(app)
    return app


def logging_lifespan(state: AppState) -> Lifespan:
    """Start the prediction log's writer with the app, and flush it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.prediction_log is not None:
            state.prediction_log.start()
        try:
            yield
        finally:
            if state.prediction_log is not None:
                state.prediction_log.close()

    return lifespan


def following_lifespan(state: AppState) -> Lifespan:
    """As :func:`logging_lifespan`, and load the alias's version at start and follow the
    alias while the app runs."""
    logging = logging_lifespan(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        threading.Thread(target=state.holder.reload, name="model-load", daemon=True).start()
        threading.Thread(
            target=state.holder.watch,
            args=(state.params.poll_seconds, stop),
            name="alias-watch",
            daemon=True,
        ).start()
        async with logging(app):
            try:
                yield
            finally:
                stop.set()

    return lifespan


def check_bind(host: str) -> None:
    if host not in LOCAL_HOSTS:
        log.warning("serve: binding to %s: reachable from other machines (serve.host)", host)


def serve(
    params: ServeParams,
    name: str,
    host: str | None = None,
    port: int | None = None,
    prediction_log: Path = PREDICTION_LOG,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import torch
    import uvicorn

    # One intra-op thread: the models are small and requests many; more threads spin against
    # each other (and the event loop) on a small machine and blow up tail latency.
    torch.set_num_threads(1)
    host = host or params.host
    check_bind(host)
    holder = ModelHolder(name, params.alias)
    holder.freeze_after_load = True
    app = create_app(
        params,
        name,
        holder,
        prediction_log=PredictionLog(prediction_log, params.log_max_rows, params.log_sample_rate),
    )
    log.info("serve: http://%s:%d (models:/%s@%s)", host, port or params.port, name, params.alias)
    uvicorn.run(app, host=host, port=port or params.port, log_level="warning", access_log=False)

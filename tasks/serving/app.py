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
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tasks.core.config import ServeParams
from tasks.core.paths import PREDICTION_LOG
from tasks.core.prediction_log.ids import not_logged_ids
from tasks.core.prediction_log.labels import Label, StoredLabel
from tasks.core.prediction_log.writer import PredictionLog
from tasks.core.refusals import InputError
from tasks.serving.inputs import (
    decode_image,
    feedback_body_bytes,
    feedback_schema,
    fit_to_raw,
    parse_batch,
    parse_feedback,
    predict_body,
    upload_name,
)
from tasks.serving.metrics import LimitAndMeasure, ServingMetrics
from tasks.serving.model import ModelHolder, ServedModel, log
from tasks.serving.pages import add_pages


def predictions(model: ServedModel, probabilities: np.ndarray) -> list[dict[str, Any]]:
    best = probabilities.argmax(axis=1).tolist()
    names = model.class_names
    return [
        {
            "class_index": index,
            "class_name": names[index],
            "probabilities": dict(zip(names, row, strict=True)),
        }
        for index, row in zip(best, np.round(probabilities, 6).tolist(), strict=True)
    ]


def _error_response(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            }
        },
    }


ERROR_RESPONSES = {
    400: _error_response("Malformed JSON"),
    413: _error_response("Payload too large"),
    415: _error_response("Wrong content type"),
    422: _error_response("Invalid input; `detail` names the field"),
    503: _error_response("No model loaded yet"),
}
PREDICT_RESPONSES = {
    200: {
        "description": "One prediction and one prediction id per image, in the order sent",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "class_index": {"type": "integer"},
                                    "class_name": {"type": "string"},
                                    "probabilities": {
                                        "type": "object",
                                        "additionalProperties": {"type": "number"},
                                        "description": "Each class name's probability.",
                                    },
                                },
                            },
                        },
                        "prediction_ids": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "For POST /feedback, one per image.",
                        },
                    },
                }
            }
        },
    },
    **ERROR_RESPONSES,
}
FORBIDDEN_RESPONSE = {403: _error_response("Not from this machine")}
FEEDBACK_RESPONSES = {
    400: ERROR_RESPONSES[400],
    404: _error_response(
        "Prediction not logged: unknown id, sampled out, past retention, or in a log file "
        "that was removed"
    ),
    409: _error_response("Already labelled, or the same id twice in one batch"),
    413: ERROR_RESPONSES[413],
    415: ERROR_RESPONSES[415],
    422: _error_response("Invalid body, or a label that is not a class of the model"),
    503: _error_response(
        "The prediction log is not running, did not answer in time, or failed to write "
        "this prediction (a full disk)"
    ),
}
FEEDBACK_DESCRIPTION = """Store the true class of served predictions, for training and for
monitoring live accuracy.

One label: `{"prediction_id": "<id>", "label": "<class name>" | <class index>}`; a batch:
`{"items": [<label>, ...]}` (at most `serve.max_batch`), stored all or none. The id is one of
`prediction_ids` from a /predict or /predict/image answer; the label is checked against the
classes of the model version that made that prediction. Refusals: 404 an id not in the
prediction log (unknown, not logged because of `serve.log_sample_rate`, or past retention),
409 an id already labelled or twice in the batch, 422 a malformed body or a label that is not
one of the version's classes, 503 a prediction that was answered but whose log write failed (a
full disk: it never will be in the log); `detail` names the field."""
# A body this small holding pixel lists only is parsed and predicted in well under a
# millisecond or two (256 8x8 images); larger ones, and any image to decode, go to the pool.
INLINE_BODY_BYTES = 64 * 1024
# How long /feedback waits for the log's writer (behind the predictions queued before it).
FEEDBACK_TIMEOUT_S = 10.0
LOOPBACK = frozenset({"127.0.0.1", "::1"})


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


def create_app(
    params: ServeParams,
    name: str,
    holder: ModelHolder | None = None,
    prediction_log: PredictionLog | None = None,
    watch: bool = True,
    load_on_start: bool = True,
) -> FastAPI:
    """The FastAPI app. Loads the alias's version at start (in the background, so ``/health``
    answers at once); with ``watch``, follows the alias every ``params.poll_seconds``."""
    state = AppState(
        name=name,
        params=params,
        holder=holder or ModelHolder(name, params.alias),
        metrics=ServingMetrics(),
        prediction_log=prediction_log,
        body=predict_body(params.max_batch),
        limiter=anyio.CapacityLimiter(params.threads),
    )
    app = FastAPI(
        title="mlcycle serving",
        description=f"Predictions from `models:/{name}@{params.alias}`.",
        lifespan=_lifespan(state, watch, load_on_start),
        docs_url=None,  # pages.add_pages serves /docs from local assets
        redoc_url=None,  # ReDoc's bundle always fetches its logo from the internet
    )
    app.state.serving = state
    if prediction_log is not None:
        state.metrics.registry.register(PredictionLogCollector(prediction_log))
    app.add_middleware(LimitAndMeasure, max_bytes=params.max_body_bytes, metrics=state.metrics)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        responses=PREDICT_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": state.body.model_json_schema()}},
            }
        },
    )
    app.add_api_route(
        "/predict/image", predict_image, methods=["POST"], responses=PREDICT_RESPONSES
    )
    app.add_api_route(
        "/feedback",
        feedback,
        methods=["POST"],
        description=FEEDBACK_DESCRIPTION,
        responses=FEEDBACK_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": feedback_schema(params.max_batch)}},
            }
        },
    )
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"], responses={503: ERROR_RESPONSES[503]})
    app.add_api_route("/metadata", metadata, methods=["GET"], responses={503: ERROR_RESPONSES[503]})
    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    app.add_api_route(
        "/admin/reload",
        reload,
        methods=["POST"],
        status_code=202,
        responses=FORBIDDEN_RESPONSE,
    )
    add_pages(app)
    return app


class PredictionLogCollector:
    """The log's losses as Prometheus counters, read at scrape time: a file removed or
    replaced under it (each time a new one was started) and the rows that went with it."""

    def __init__(self, prediction_log: PredictionLog) -> None:
        self.prediction_log = prediction_log

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "mlcycle_prediction_log_recreated",
            "Times the prediction log's file was found removed or replaced and started anew",
            value=self.prediction_log.recreated,
        )
        yield CounterMetricFamily(
            "mlcycle_prediction_log_lost_rows",
            "Logged rows that went with a removed or replaced prediction log file",
            value=self.prediction_log.lost,
        )


def _lifespan(state: AppState, watch: bool, load_on_start: bool) -> Any:
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_on_start:
            threading.Thread(target=state.holder.reload, name="model-load", daemon=True).start()
        if watch:
            threading.Thread(
                target=state.holder.watch,
                args=(state.params.poll_seconds, stop),
                name="alias-watch",
                daemon=True,
            ).start()
        if state.prediction_log is not None:
            state.prediction_log.start()
        yield
        stop.set()
        if state.prediction_log is not None:
            state.prediction_log.close()

    return lifespan


def _serving(request: Request) -> AppState:
    return request.app.state.serving


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _input_error(request: Request, error: InputError) -> JSONResponse:
    return _problem(error.status, str(error))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {"loc": ("body",), "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return _problem(422, f"{where}: {first['msg']}")


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return _problem(error.status_code, str(error.detail))


async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
    """A client that hangs up mid-request is one line in the log, not an ASGI traceback."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    log.info(
        "serve: %s disconnected before %s %s was read", client, request.method, request.url.path
    )
    return Response(status_code=400)  # nobody is listening; uvicorn drops it


def current_model(state: AppState) -> ServedModel:
    """The model this request will use to the end, or 503 saying why there is none. A reload
    may swap ``holder.current`` meanwhile: the request finishes on the model it took."""
    model = state.holder.current
    if model is None:
        raise InputError("model", state.holder.last_error or "not loaded yet", status=503)
    return model


def serve_batch(state: AppState, model: ServedModel, endpoint: str, images: np.ndarray) -> Response:
    probabilities = model.predict(images)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(model.class_names))
    for index in np.flatnonzero(counts):
        state.metrics.predicted.labels(model.class_names[index]).inc(int(counts[index]))
    if state.prediction_log is not None:
        ids = state.prediction_log.record(model, endpoint, images, probabilities)
    else:
        ids = not_logged_ids(len(images))
    body = {
        "model_name": model.name,
        "model_version": model.version,
        "predictions": predictions(model, probabilities),
        "prediction_ids": ids,  # one per image, for POST /feedback
    }
    # json.dumps directly: FastAPI's generic encoder walks every float (slow for batches)
    return Response(json.dumps(body).encode(), media_type="application/json")


def _json_only(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise InputError(
            "content-type", f"expected application/json, got {content_type or 'none'}", 415
        )


async def predict(request: Request) -> Response:
    """Predict a batch of images."""
    state = _serving(request)
    _json_only(request)
    raw = await request.body()  # LimitAndMeasure refuses it past max_body_bytes
    model = current_model(state)
    if len(raw) > INLINE_BODY_BYTES:  # even its JSON takes a while: all of it in the pool
        return await off_the_loop(state, parse_and_predict, state, model, raw)
    payload = parse_json(raw)
    if _pixel_lists_only(payload):  # no image to decode: cheaper than a hop to the pool
        return predict_json(state, model, raw, payload)
    return await off_the_loop(state, predict_json, state, model, raw, payload)


def parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except RecursionError:
        raise InputError("body", "JSON nested too deeply", 400) from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, integers of >4300 digits
        raise InputError("body", f"malformed JSON ({str(error)[:120]})", 400) from None


def _pixel_lists_only(payload: object) -> bool:
    images = payload.get("images") if isinstance(payload, dict) else None
    return isinstance(images, list) and all(isinstance(image, list) for image in images)


def parse_and_predict(state: AppState, model: ServedModel, raw: bytes) -> Response:
    return predict_json(state, model, raw, parse_json(raw))


def predict_json(state: AppState, model: ServedModel, raw: bytes, payload: object) -> Response:
    """Check, decode, fit and predict a parsed /predict body."""
    may_hold_bools = b"true" in raw or b"false" in raw
    images = parse_batch(payload, model, state.params, state.body, may_hold_bools)
    return serve_batch(state, model, "/predict", images)


async def predict_image(request: Request, file: UploadFile) -> Response:
    """Predict one uploaded PNG or JPEG image."""
    state = _serving(request)
    model = current_model(state)
    data = await file.read()
    return await off_the_loop(state, predict_upload, state, model, data, upload_name(file.filename))


def predict_upload(state: AppState, model: ServedModel, data: bytes, name: str) -> Response:
    """Decode, fit and predict one upload; a refusal names the file (``digit.txt: ...``)."""
    pixels = decode_image(data, name, state.params.max_image_side)
    images = fit_to_raw(pixels, model.raw_shape)[np.newaxis]
    return serve_batch(state, model, "/predict/image", images)


async def feedback(request: Request) -> Response:
    """Store the true class of served predictions (see the description above)."""
    state = _serving(request)
    _json_only(request)
    raw = await request.body()
    limit = feedback_body_bytes(state.params.max_batch)
    if len(raw) > limit:  # a body this small parses on the loop in well under a millisecond
        raise InputError("body", f"over the {limit}-byte limit of /feedback", 413)
    labels = parse_feedback(parse_json(raw), state.params.max_batch)
    stored = await store_labels(state, labels)
    for label in stored:
        state.metrics.feedback.labels(label.label_name).inc()
    body = {
        "stored": len(stored),
        "labels": [
            {
                "prediction_id": label.prediction_id,
                "label_index": label.label_index,
                "label_name": label.label_name,
                "model_version": label.model_version,
            }
            for label in stored
        ],
    }
    return JSONResponse(body)


async def store_labels(state: AppState, labels: tuple[Label, ...]) -> list[StoredLabel]:
    """Hand the labels to the log's writer thread and wait for its answer without holding the
    event loop or a request thread: SQLite is touched by the writer alone."""
    if state.prediction_log is None:
        first = labels[0]
        raise InputError(
            f"{first.where}prediction_id",
            f"{first.prediction_id} was not logged: this app keeps no prediction log",
            404,
        )
    done = state.prediction_log.submit_labels(labels)
    try:
        with anyio.fail_after(FEEDBACK_TIMEOUT_S):
            return await asyncio.wrap_future(done)
    except TimeoutError:
        raise InputError(
            "feedback",
            f"the prediction log did not answer in {FEEDBACK_TIMEOUT_S:g} s; try again",
            503,
        ) from None


async def off_the_loop(state: AppState, work: Callable[..., Response], *args: object) -> Response:
    """Run a request's CPU work in the bounded pool (``serve.threads``), so the event loop
    keeps answering (``/health`` while a 4096x4096 PNG decodes); a request waits for a free
    thread rather than piling up. Small bodies of pixel lists stay on the loop: the hop to a
    thread cost more than their work (single-image p50 4 -> 8 ms)."""
    return await anyio.to_thread.run_sync(work, *args, limiter=state.limiter)


async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


async def ready(request: Request) -> Response:
    """A model is loaded and served."""
    state = _serving(request)
    model = state.holder.current
    body = {
        "ready": model is not None,
        "model_name": state.name,
        "version": model.version if model else None,
        "last_error": state.holder.last_error,
    }
    return JSONResponse(body, status_code=200 if model else 503)


async def metadata(request: Request) -> Response:
    """The served version: name, version, alias, data version, params, trained at; and the
    prediction log's counts (written, dropped, and a file removed under it: recreated, lost)."""
    state = _serving(request)
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

    state = _serving(request)
    model = state.holder.current
    if model is not None:
        state.metrics.model_version.labels(state.name).set(float(model.version))
    if state.prediction_log is not None:
        state.metrics.log_dropped.set(state.prediction_log.dropped)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def reload(request: Request) -> dict[str, Any]:
    """Load the version now holding the alias (loopback clients only); poll /ready."""
    holder = _serving(request).holder
    if (request.client.host if request.client else "") not in LOOPBACK:
        raise InputError("client", "reload is accepted from this machine only", 403)
    threading.Thread(target=holder.reload, name="model-reload", daemon=True).start()
    return {"reloading": True, "serving": holder.current.version if holder.current else None}


def check_bind(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
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

"""``POST /predict`` (a JSON batch of images) and ``POST /predict/image`` (one uploaded file):
check and fit the inputs, predict, log, answer with one prediction and one id per image."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import Response

from tasks.core.prediction_log.ids import not_logged_ids
from tasks.core.prediction_log.writer import PROBABILITY_DIGITS
from tasks.serving.inputs import (
    decode_image,
    fit_to_raw,
    parse_batch,
    parse_json,
    require_json,
    upload_name,
)
from tasks.serving.model import ServedModel
from tasks.serving.openapi import PREDICT_RESPONSES
from tasks.serving.state import AppState, current_model, serving

# A body this small holding pixel lists only is parsed and predicted in well under a
# millisecond or two (256 8x8 images); larger ones, and any image to decode, go to the pool.
INLINE_BODY_BYTES = 64 * 1024


def add_routes(app: FastAPI, state: AppState) -> None:
    """``/predict`` (its body documented by the model that checks it) and ``/predict/image``."""
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


def predictions(model: ServedModel, probabilities: np.ndarray) -> list[dict[str, Any]]:
    best = probabilities.argmax(axis=1).tolist()
    names = model.class_names
    return [
        {
            "class_index": index,
            "class_name": names[index],
            "probabilities": dict(zip(names, row, strict=True)),
        }
        for index, row in zip(
            best, np.round(probabilities, PROBABILITY_DIGITS).tolist(), strict=True
        )
    ]


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


async def predict(request: Request) -> Response:
    """Predict a batch of images."""
    state = serving(request)
    require_json(request.headers.get("content-type", ""))
    raw = await request.body()  # LimitAndMeasure refuses it past max_body_bytes
    model = current_model(state)
    if len(raw) > INLINE_BODY_BYTES:  # even its JSON takes a while: all of it in the pool
        return await off_the_loop(state, parse_and_predict, state, model, raw)
    payload = parse_json(raw)
    if _pixel_lists_only(payload):  # no image to decode: cheaper than a hop to the pool
        return predict_json(state, model, raw, payload)
    return await off_the_loop(state, predict_json, state, model, raw, payload)


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
    state = serving(request)
    model = current_model(state)
    data = await file.read()
    return await off_the_loop(state, predict_upload, state, model, data, upload_name(file.filename))


def predict_upload(state: AppState, model: ServedModel, data: bytes, name: str) -> Response:
    """Decode, fit and predict one upload; a refusal names the file (``digit.txt: ...``)."""
    pixels = decode_image(data, name, state.params.max_image_side)
    images = fit_to_raw(pixels, model.raw_shape)[np.newaxis]
    return serve_batch(state, model, "/predict/image", images)


async def off_the_loop(state: AppState, work: Callable[..., Response], *args: object) -> Response:
    """Run a request's CPU work in the bounded pool (``serve.threads``), so the event loop
    keeps answering (``/health`` while a 4096x4096 PNG decodes); a request waits for a free
    thread rather than piling up. Small bodies of pixel lists stay on the loop: the hop to a
    thread cost more than their work (single-image p50 4 -> 8 ms)."""
    return await anyio.to_thread.run_sync(work, *args, limiter=state.limiter)

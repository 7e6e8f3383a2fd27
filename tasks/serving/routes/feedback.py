"""``POST /feedback``: the true classes of served predictions, by the ids /predict answered
with, stored beside the logged predictions by the log's writer thread."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tasks.core.prediction_log.labels import Label, StoredLabel
from tasks.core.refusals import InputError
from tasks.serving.inputs import (
    feedback_body_bytes,
    feedback_schema,
    parse_feedback,
    parse_json,
    require_json,
)
from tasks.serving.openapi import FEEDBACK_DESCRIPTION, FEEDBACK_RESPONSES
from tasks.serving.state import AppState, serving

# How long /feedback waits for the log's writer (behind the predictions queued before it).
FEEDBACK_TIMEOUT_S = 10.0


def add_routes(app: FastAPI, state: AppState) -> None:
    """``/feedback``, its body's schema inline (one label, or a batch of serve.max_batch)."""
    app.add_api_route(
        "/feedback",
        feedback,
        methods=["POST"],
        description=FEEDBACK_DESCRIPTION,
        responses=FEEDBACK_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": feedback_schema(state.params.max_batch)}
                },
            }
        },
    )


async def feedback(request: Request) -> Response:
    """Store the true class of served predictions (see the description above)."""
    state = serving(request)
    require_json(request.headers.get("content-type", ""))
    raw = await request.body()
    limit = feedback_body_bytes(state.params.max_batch)
    if len(raw) > limit:  # a body this small parses on the loop in well under a millisecond
        raise InputError(
            "body", f"over the {limit}-byte limit of /feedback", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        )
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
            HTTPStatus.NOT_FOUND,
        )
    done = state.prediction_log.submit_labels(labels)
    try:
        with anyio.fail_after(FEEDBACK_TIMEOUT_S):
            return await asyncio.wrap_future(done)
    except TimeoutError:
        raise InputError(
            "feedback",
            f"the prediction log did not answer in {FEEDBACK_TIMEOUT_S:g} s; try again",
            HTTPStatus.SERVICE_UNAVAILABLE,
        ) from None

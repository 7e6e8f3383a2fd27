"""The API's documented answers: what each route may answer besides its own body, as the
OpenAPI schema (``/openapi.json``, ``/docs``) states it. Every refusal is ``{"detail": ...}``."""

from __future__ import annotations

from typing import Any


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

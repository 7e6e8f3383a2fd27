"""Request inputs: nested pixel lists or base64 PNG/JPEG, checked and fitted to the raw shape;
every refusal names the field at fault.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tasks.core.config import ServeParams
from tasks.core.images import (
    PIXEL_MAX,
    ImageFormatError,
    convert_channels,
    pixels_from_image,
    resize,
)
from tasks.core.prediction_log.ids import ID_DIGITS, PREDICTION_ID
from tasks.core.prediction_log.labels import Label
from tasks.core.refusals import InputError
from tasks.serving.model import ServedModel

# What PIL puts in some messages: "cannot identify image file <_io.BytesIO object at 0x7f...>".
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
NOT_AN_IMAGE = "not an image PIL can read; expected a PNG or JPEG file"
ERROR_TEXT_CHARS = 120  # of a library's error message quoted in a refusal
SHOWN_VALUE_CHARS = 48  # of a refused value quoted in a refusal
UPLOAD_NAME_CHARS = 100  # of an upload's file name, as refusals name it


def decode_image(data: bytes, field: str, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 H x W x C pixels, as the folder source reads images.

    ``field`` names the input in every refusal: an upload's file name, or ``images[3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise InputError(field, f"expected a PNG or JPEG image, got {image.format}")
            if max(image.size) > max_side:
                raise InputError(
                    field, f"image is {image.size[0]}x{image.size[1]}, at most {max_side} a side"
                )
            image.load()
            return np.array(pixels_from_image(image, field))  # writable: torch reads it
    except Image.DecompressionBombError as error:
        raise InputError(field, f"image too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise InputError(field, NOT_AN_IMAGE) from None
    except ImageFormatError as error:
        raise InputError(field, str(error).removeprefix(f"{field}: ")) from None
    except (OSError, SyntaxError, ValueError) as error:  # a truncated or damaged PNG/JPEG
        reason = _OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__
        raise InputError(
            field, f"a damaged PNG or JPEG image ({reason[:ERROR_TEXT_CHARS]})"
        ) from None


def upload_name(filename: str | None) -> str:
    """How refusals name an uploaded file: its base name as the client sent it, or ``file``
    (the form field) when it came without one."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(char for char in name if char.isprintable())
    return name[:UPLOAD_NAME_CHARS] or "file"


def fit_to_raw(pixels: np.ndarray, raw_shape: Sequence[int]) -> np.ndarray:
    """A decoded image in any size -> the raw data's shape (channels, then size), as training's
    preprocessing would convert and resize it."""
    height, width, channels = raw_shape
    batch = pixels[np.newaxis]
    if batch.shape[-1] != channels:
        batch = convert_channels(batch, channels)
    if batch.shape[1:3] != (height, width):
        batch = resize(batch, (height, width))
    return batch[0]


def parse_pixels(item: Any, field: str, raw_shape: Sequence[int]) -> np.ndarray:
    """Nested lists of 0-255 numbers in the raw shape (H x W x C, or H x W when C is 1)."""
    height, width, channels = raw_shape
    try:
        array = np.asarray(item, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InputError(
            field, "expected nested lists of numbers of equal lengths (ragged or non-numeric)"
        ) from None
    if array.dtype != np.float64 or _holds_non_numbers(item):
        raise InputError(field, "expected numbers, got another type (true/false or strings)")
    if array.ndim == 2 and channels == 1:
        array = array[..., np.newaxis]
    if array.shape != (height, width, channels):
        expected = f"{height}x{width}x{channels}" + (
            f" or {height}x{width}" if channels == 1 else ""
        )
        got = "x".join(str(n) for n in array.shape) or "a single number"
        raise InputError(field, f"expected pixel values of shape {expected}, got {got}")
    if not np.isfinite(array).all():
        raise InputError(field, "holds NaN or infinity; expected pixel values 0-255")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > PIXEL_MAX:
        raise InputError(field, f"values {low:g} to {high:g} out of range; expected 0-255")
    return np.rint(array).astype(np.uint8)


def _holds_non_numbers(item: Any) -> bool:
    """np.asarray takes True as 1.0; a pixel value is never a bool."""
    stack = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
    return False


IMAGES_DESCRIPTION = (
    "Images as nested lists of 0-255 pixel values in the raw data's shape (H x W x C, or H x W "
    "for one channel), or base64 PNG/JPEG strings."
)


def predict_body(max_batch: int) -> type[BaseModel]:
    """The ``/predict`` body as a pydantic model: the one statement of its shape, which checks
    every request (:func:`parse_batch`) and is the OpenAPI schema of the endpoint."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        images=(
            Annotated[
                list[str | list],
                Field(min_length=1, max_length=max_batch, description=IMAGES_DESCRIPTION),
            ],
            ...,
        ),
    )


# Which problem to report when a body has several: the order a person fixes them in.
_ENVELOPE_ORDER = {"model_type": 0, "extra_forbidden": 1, "missing": 2}


def _envelope_error(error: ValidationError, max_batch: int) -> InputError:
    """The first problem of a /predict body in one line naming the field at fault."""
    first = min(
        error.errors(), key=lambda item: _ENVELOPE_ORDER.get(item["type"], len(_ENVELOPE_ORDER))
    )
    location, kind, given = first["loc"], first["type"], first["input"]
    if not location:
        return InputError("body", f"expected a JSON object with 'images', got {_kind(given)}")
    if kind == "extra_forbidden":
        return InputError(str(location[0]), "unknown field; expected only 'images'")
    if kind == "missing":
        return InputError("images", "missing")
    if len(location) == 1:
        if kind == "too_short":
            return InputError("images", "empty batch; send at least one image")
        if kind == "too_long":
            return InputError("images", f"{len(given)} images; at most {max_batch} per request")
        return InputError("images", f"expected a list of images, got {_kind(given)}")
    return InputError(
        f"images[{location[1]}]",
        f"expected nested lists of pixels or a base64 PNG/JPEG string, got {_kind(given)}",
    )


def _kind(value: Any) -> str:
    return type(value).__name__


def parse_batch(
    payload: Any,
    model: ServedModel,
    params: ServeParams,
    body: type[BaseModel],
    may_hold_bools: bool = True,
) -> np.ndarray:
    """A /predict body -> raw-shaped uint8 images, or InputError naming the field at fault.

    ``body``: :func:`predict_body` for ``params.max_batch``. ``may_hold_bools``: whether the
    raw body contains ``true``/``false`` at all; when it does not, a batch of nested lists is
    checked as one array (the fast path), and only a batch with a problem is walked image by
    image to name the one at fault."""
    try:
        items = body.model_validate(payload).images
    except ValidationError as error:
        raise _envelope_error(error, params.max_batch) from None
    if not may_hold_bools and all(isinstance(item, list) for item in items):
        batch = _valid_batch(items, model.raw_shape)
        if batch is not None:
            return batch
    images = []
    for index, item in enumerate(items):
        where = f"images[{index}]"
        if isinstance(item, str):
            try:
                data = base64.b64decode(item.split(",", 1)[-1], validate=True)  # data URLs too
            except (binascii.Error, ValueError):
                raise InputError(where, "not valid base64") from None
            pixels = decode_image(data, where, params.max_image_side)
            images.append(fit_to_raw(pixels, model.raw_shape))
        else:  # a list: the body model admits nothing else
            images.append(parse_pixels(item, where, model.raw_shape))
    return np.stack(images)


def _valid_batch(items: list, raw_shape: Sequence[int]) -> np.ndarray | None:
    """The whole batch as uint8 if every image is well formed, else None (find the fault
    image by image)."""
    try:
        array = np.asarray(items)  # no dtype: strings stay strings, huge integers objects
    except (ValueError, TypeError, OverflowError):
        return None
    if array.dtype.kind not in "iuf":
        return None
    array = array.astype(np.float64, copy=False)
    if array.ndim == 3 and raw_shape[2] == 1:
        array = array[..., np.newaxis]
    if array.shape[1:] != tuple(raw_shape) or not np.isfinite(array).all():
        return None
    if array.min() < 0 or array.max() > PIXEL_MAX:
        return None
    return np.rint(array).astype(np.uint8)


# --- /feedback ------------------------------------------------------------------------------

MAX_CLASS_NAME = 200  # a label longer than any sane class name is a mistake, not a class
FEEDBACK_ITEM_BYTES = 256  # room for one item's JSON: the body limit scales with the batch
FEEDBACK_ENVELOPE_BYTES = 1024  # room for the body around the items (``{"items": [...]}``)


def feedback_body_bytes(max_items: int) -> int:
    """The size limit of a /feedback body: enough for ``max_items`` items, and small enough to
    parse on the event loop."""
    return FEEDBACK_ITEM_BYTES * max_items + FEEDBACK_ENVELOPE_BYTES


def feedback_schema(max_items: int) -> dict[str, Any]:
    """The /feedback body's JSON schema (OpenAPI), inline: one item, or a batch of them."""
    item = {
        "type": "object",
        "properties": {
            "prediction_id": {
                "type": "string",
                "pattern": PREDICTION_ID.pattern,
                "description": "An id from `prediction_ids` of a /predict answer.",
            },
            "label": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_CLASS_NAME},
                    {"type": "integer", "minimum": 0},
                ],
                "description": "The true class: its name, or its index in the model's classes.",
            },
        },
        "required": ["prediction_id", "label"],
        "additionalProperties": False,
    }
    batch = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}
        },
        "required": ["items"],
        "additionalProperties": False,
    }
    return {"anyOf": [item, batch]}


def parse_feedback(payload: Any, max_items: int) -> tuple[Label, ...]:
    """A /feedback body -> its labels, or InputError naming the field at fault (422), or the
    repeated id (409: a batch is stored whole or not at all, so it cannot say the same twice)."""
    if isinstance(payload, dict) and "items" in payload:
        extra = sorted(set(payload) - {"items"})
        if extra:
            raise InputError(str(extra[0]), "unknown field; expected only 'items'")
        items = payload["items"]
        if not isinstance(items, list):
            raise InputError("items", f"expected a list of labels, got {_kind(items)}")
        if not items:
            raise InputError("items", "empty batch; send at least one label")
        if len(items) > max_items:
            raise InputError("items", f"{len(items)} labels; at most {max_items} per request")
        labels = tuple(_label(item, f"items[{index}].") for index, item in enumerate(items))
    elif isinstance(payload, dict):
        labels = (_label(payload, ""),)
    else:
        raise InputError(
            "body",
            "expected a JSON object, {prediction_id, label} or {items: [...]}, "
            f"got {_kind(payload)}",
        )
    first: dict[str, str] = {}
    for label in labels:
        seen = first.setdefault(label.prediction_id, label.where)
        if seen != label.where:
            raise InputError(
                f"{label.where}prediction_id",
                f"{label.prediction_id} is also in {seen.rstrip('.')}; label each prediction once",
                HTTPStatus.CONFLICT,
            )
    return labels


def _label(item: Any, where: str) -> Label:
    if not isinstance(item, dict):
        raise InputError(
            where.rstrip(".") or "body",
            f"expected an object with prediction_id and label, got {_kind(item)}",
        )
    extra = sorted(set(item) - {"prediction_id", "label"})
    if extra:
        raise InputError(f"{where}{extra[0]}", "unknown field; expected prediction_id and label")
    for key in ("prediction_id", "label"):
        if key not in item:
            raise InputError(f"{where}{key}", "missing")
    prediction_id, label = item["prediction_id"], item["label"]
    if not isinstance(prediction_id, str) or not PREDICTION_ID.match(prediction_id):
        shown = (
            repr(prediction_id)[:SHOWN_VALUE_CHARS]
            if isinstance(prediction_id, str)
            else _kind(prediction_id)
        )
        raise InputError(
            f"{where}prediction_id",
            f"expected an id from a /predict answer's prediction_ids ({ID_DIGITS} characters), "
            f"got {shown}",
        )
    valid_name = isinstance(label, str) and 0 < len(label) <= MAX_CLASS_NAME
    valid_index = isinstance(label, int) and not isinstance(label, bool) and label >= 0
    if not (valid_name or valid_index):
        shown = (
            repr(label)[:SHOWN_VALUE_CHARS]
            if isinstance(label, str | int | float)
            else _kind(label)
        )
        raise InputError(
            f"{where}label", f"expected a class name or a class index (0 or more), got {shown}"
        )
    return Label(prediction_id, label, where)


# --- JSON bodies ----------------------------------------------------------------------------


def require_json(content_type: str) -> None:
    """Refuse (415) a body whose Content-Type header is not JSON."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json":
        raise InputError(
            "content-type",
            f"expected application/json, got {media_type or 'none'}",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )


def parse_json(raw: bytes) -> object:
    """A request body as JSON, or a 400 naming what is wrong with it."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InputError("body", "JSON nested too deeply", HTTPStatus.BAD_REQUEST) from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, integers of >4300 digits
        reason = f"malformed JSON ({str(error)[:ERROR_TEXT_CHARS]})"
        raise InputError("body", reason, HTTPStatus.BAD_REQUEST) from None

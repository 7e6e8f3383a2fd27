"""serve: the champion model over HTTP (FastAPI on uvicorn), hot-reloaded when its alias moves.

- ``POST /predict``: ``{"images": [...]}``, each image as nested lists of 0-255 pixel values in
  the raw data's shape (as ``data/raw`` stores them) or a base64 PNG/JPEG string.
- ``POST /predict/image``: one uploaded PNG/JPEG file.
- ``GET /health`` (alive), ``/ready`` (model loaded), ``/metadata``, ``/metrics`` (Prometheus),
  ``/`` (a page to draw or upload a digit), ``POST /admin/reload`` (loopback clients only).

Every input goes through the training code's own preprocessing (``tasks.preprocess``), with
the settings recorded on the model version, and the normalisation statistics live inside the
model: nothing is re-typed here. Predictions are logged off the request thread to
``data/serving/predictions.sqlite`` for monitoring.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
import json
import logging
import queue
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from tasks.config import MlcycleError, ServeParams

log = logging.getLogger("mlcycle.serve")

SERVING_DIR = Path("data/serving")
PREDICTION_LOG = SERVING_DIR / "predictions.sqlite"
PAGE = Path(__file__).with_name("serve_page.html")
RETRY_FAILED_AFTER_POLLS = 30  # a failure may be passing (the registry was down), so retry


class InputError(MlcycleError):
    """A request the app refuses: ``field`` names the part of the input at fault."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status


class NoModelError(MlcycleError):
    """No version holds the served alias yet, or it cannot be loaded."""


# --- the served model --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """A loaded registry version and what it needs to take raw inputs."""

    name: str
    version: str
    alias: str
    module: Any  # torch nn.Module on CPU, eval mode
    class_names: tuple[str, ...]
    raw_shape: tuple[int, int, int]  # H, W, C of one image as data/raw holds it
    image_size: int | None  # the preprocess settings the model was trained with
    channels: int | None
    metadata: dict[str, Any]

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Raw-shaped uint8 images -> the network's input, by the training code itself."""
        from tasks.preprocess import prepare_images

        return prepare_images(images, self.image_size, self.channels)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of raw-shaped uint8 images."""
        import torch

        batch = torch.from_numpy(self.prepare(images).astype(np.float32))
        with torch.inference_mode():
            return torch.softmax(self.module(batch), dim=1).numpy()


def model_version(name: str, alias: str, version: str | None = None) -> Any:
    """The registry's record of ``version`` (default: the one holding ``alias``);
    NoModelError if there is none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if version is None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as error:
        wanted = f"version {version}" if version else f"alias '{alias}'"
        raise NoModelError(f"'{name}' has no {wanted} ({error.message})") from None


def resolve_alias(name: str, alias: str) -> str:
    """The version number holding ``alias``; NoModelError if none does."""
    return str(model_version(name, alias).version)


def load_served_model(name: str, alias: str, version: str | None = None) -> ServedModel:
    """Load ``models:/<name>/<version>`` (default: the one holding ``alias``) for serving."""
    import mlflow.pytorch

    from tasks.registry import TAG_CLASS_NAMES, TAG_INPUT_SHAPE, TAG_PARAMS, TAG_RAW_SHAPE
    from tasks.tracking import TAG_DVC_PREFIX, TAG_GIT_COMMIT

    details = model_version(name, alias, version)
    version, tags = str(details.version), dict(details.tags)
    try:
        # MLflow 3 saves the network as a torch.export program, already in eval mode (its
        # module has no .eval()).
        with tempfile.TemporaryDirectory(prefix="mlcycle-serve-") as scratch:  # no leftovers
            module = mlflow.pytorch.load_model(
                f"models:/{name}/{version}", dst_path=scratch, map_location="cpu"
            )
        class_names = tuple(json.loads(tags[TAG_CLASS_NAMES]))
        input_shape = tuple(json.loads(tags[TAG_INPUT_SHAPE]))
        raw_shape = tuple(json.loads(tags.get(TAG_RAW_SHAPE) or tags[TAG_INPUT_SHAPE]))
        params = json.loads(tags.get(TAG_PARAMS, "{}"))
    except Exception as error:  # a broken artifact or tags from another tool
        raise NoModelError(
            f"version {version} of '{name}' cannot be served ({type(error).__name__}: {error})"
        ) from None

    def setting(key: str) -> int | None:
        value = params.get(f"preprocess.{key}", "None")
        return None if value in ("None", "null") else int(value)

    metadata = {
        "model_name": name,
        "version": version,
        "alias": alias,
        "class_names": list(class_names),
        "raw_shape": list(raw_shape),
        "input_shape": list(input_shape),
        "data_version": {
            key.removeprefix(TAG_DVC_PREFIX): value
            for key, value in tags.items()
            if key.startswith(TAG_DVC_PREFIX)
        },
        "git_commit": tags.get(TAG_GIT_COMMIT, "unknown"),
        "mlflow_run_id": tags.get("mlcycle.mlflow_run_id"),
        "trained_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(details.creation_timestamp / 1000)
        ),
        "params": params,
    }
    return ServedModel(
        name=name,
        version=version,
        alias=alias,
        module=module,
        class_names=class_names,
        raw_shape=raw_shape,  # type: ignore[arg-type]
        image_size=setting("image_size"),
        channels=setting("channels"),
        metadata=metadata,
    )


class ModelHolder:
    """The model being served, swapped whole when a new version has loaded.

    A request takes ``holder.current`` once and uses that object to the end, so a swap never
    drops or mixes requests. A version that fails to load leaves the old one serving, and the
    failure is reported by ``/ready`` and ``/metadata``.
    """

    def __init__(self, name: str, alias: str) -> None:
        self.name = name
        self.alias = alias
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.freeze_after_load = False  # the serving process sets it (see serve())
        self.failed_version: str | None = None  # the watcher retries it only after a while
        self.failed_at = 0.0
        self._reload_lock = threading.Lock()

    def reload(self, version: str | None = None) -> bool:
        """Load the version holding the alias (or ``version``); True if it is now served."""
        with self._reload_lock:  # one load at a time; requests go on meanwhile
            try:
                if version is None:
                    version = resolve_alias(self.name, self.alias)
                if self.current is not None and self.current.version == version:
                    self.last_error = None
                    return True
                loaded = load_served_model(self.name, self.alias, version)
            except Exception as error:
                self.last_error = str(error)
                if version is not None:  # the alias resolved; loading that version failed
                    self.failed_version, self.failed_at = version, time.monotonic()
                log.warning("serve: could not load %s@%s: %s", self.name, self.alias, error)
                return False
            self.failed_version = None
            previous = self.current.version if self.current else None
            self.current = loaded  # the swap: one reference assignment
            self.last_error = None
            if self.freeze_after_load:
                # The model and the libraries it pulled in live as long as the process: keep
                # them out of the GC's passes, which otherwise walk them every few requests
                # (json.loads of a 64-image batch went from 1.8 ms to 0.36 ms).
                gc.collect()
                gc.freeze()
            log.info("serve: now serving %s v%s (was %s)", self.name, loaded.version, previous)
            return True

    def watch(self, every_s: float, stop: threading.Event) -> None:
        """Follow the alias: reload when it points at another version."""
        while not stop.wait(every_s):
            try:
                version = resolve_alias(self.name, self.alias)
            except Exception as error:  # the registry may be down for a while: keep serving
                self.last_error = str(error)
                continue
            if self.current is not None and self.current.version == version:
                self.last_error = None  # whatever went wrong before has passed
            elif (
                version != self.failed_version
                or time.monotonic() - self.failed_at > RETRY_FAILED_AFTER_POLLS * every_s
            ):  # a version that failed to load is fetched again only now and then
                self.reload(version)


# --- inputs ------------------------------------------------------------------------------------


def decode_image(data: bytes, field: str, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 H x W x C pixels, as the folder source reads images."""
    from PIL import Image, UnidentifiedImageError

    from tasks.collect import DataSourceError, pixels_from_image

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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, DataSourceError) as error:
        raise InputError(field, f"not a decodable PNG or JPEG image ({error})") from None


def fit_to_raw(pixels: np.ndarray, raw_shape: Sequence[int]) -> np.ndarray:
    """A decoded image in any size -> the raw data's shape (channels, then size), as training's
    preprocessing would convert and resize it."""
    from tasks.preprocess import convert_channels, resize

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
    if low < 0 or high > 255:
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


def parse_batch(
    payload: Any, model: ServedModel, params: ServeParams, may_hold_bools: bool = True
) -> np.ndarray:
    """A /predict body -> raw-shaped uint8 images, or InputError naming the field at fault.

    ``may_hold_bools``: whether the raw body contains ``true``/``false`` at all; when it does
    not, a batch of nested lists is checked as one array (the fast path), and only a batch with
    a problem is walked image by image to name the one at fault."""
    if not isinstance(payload, Mapping):
        raise InputError(
            "body", f"expected a JSON object with 'images', got {type(payload).__name__}"
        )
    unknown = sorted(set(payload) - {"images"})
    if unknown:
        raise InputError(unknown[0], "unknown field; expected only 'images'")
    if "images" not in payload:
        raise InputError("images", "missing")
    items = payload["images"]
    if not isinstance(items, list):
        raise InputError("images", f"expected a list of images, got {type(items).__name__}")
    if not items:
        raise InputError("images", "empty batch; send at least one image")
    if len(items) > params.max_batch:
        raise InputError("images", f"{len(items)} images; at most {params.max_batch} per request")
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
        elif isinstance(item, list):
            images.append(parse_pixels(item, where, model.raw_shape))
        else:
            raise InputError(
                where,
                f"expected nested lists of pixels or a base64 PNG/JPEG string, got "
                f"{type(item).__name__}",
            )
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
    if array.min() < 0 or array.max() > 255:
        return None
    return np.rint(array).astype(np.uint8)


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


# --- the prediction log ------------------------------------------------------------------------


@dataclass
class PredictionLog:
    """Inputs and outputs of served requests, appended to SQLite by a background thread.

    The request path only puts a record on a bounded queue (never blocks: a full queue drops
    the record and counts it). The writer commits in batches and keeps the newest ``max_rows``.
    """

    path: Path
    max_rows: int
    sample_rate: float = 1.0
    batch_size: int = 64  # requests per write
    flush_s: float = 0.5
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2_000))  # requests
    dropped: int = 0
    written: int = 0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS predictions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            logged_at REAL NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            input_shape TEXT NOT NULL,
            input BLOB NOT NULL,          -- the raw-shaped uint8 image, C order
            class_index INTEGER NOT NULL,
            class_name TEXT NOT NULL,
            probabilities TEXT NOT NULL   -- JSON list, in class order
        )"""

    def start(self) -> PredictionLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(self.SCHEMA)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def record(
        self, model: ServedModel, endpoint: str, images: np.ndarray, probabilities: np.ndarray
    ) -> None:
        """Queue one request's images and outputs (no encoding here: the writer does it)."""
        if self.sample_rate < 1 and random.random() >= self.sample_rate:
            return
        try:
            self.queue.put_nowait(
                (
                    time.time(),
                    model.name,
                    model.version,
                    endpoint,
                    model.class_names,
                    images,
                    probabilities,
                )
            )
        except queue.Full:
            self.dropped += len(images)

    @staticmethod
    def _rows(request: tuple) -> list[tuple]:
        stamp, name, version, endpoint, class_names, images, probabilities = request
        shape = json.dumps(list(images.shape[1:]))
        rows = []
        for image, row in zip(images, probabilities, strict=True):
            index = int(row.argmax())
            rows.append(
                (
                    stamp,
                    name,
                    version,
                    endpoint,
                    shape,
                    image.tobytes(),
                    index,
                    class_names[index],
                    json.dumps(np.round(row, 6).tolist()),
                )
            )
        return rows

    def _run(self) -> None:
        connection = sqlite3.connect(self.path)
        try:
            while not (self._stop.is_set() and self.queue.empty()):
                batch = self._take_batch()
                if batch:
                    self._write(connection, batch)
        finally:
            connection.close()

    def _take_batch(self) -> list[tuple]:
        batch: list[tuple] = []
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=timeout))
            except queue.Empty:
                break
        return batch

    def _write(self, connection: sqlite3.Connection, requests: list[tuple]) -> None:
        batch = [row for request in requests for row in self._rows(request)]
        try:
            with connection:
                connection.executemany(
                    "INSERT INTO predictions (logged_at, model_name, model_version, endpoint, "
                    "input_shape, input, class_index, class_name, probabilities) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                connection.execute(
                    "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?",
                    (self.max_rows,),
                )
            self.written += len(batch)
        except sqlite3.Error as error:  # a full disk must not take serving down
            self.dropped += len(batch)
            log.warning(
                "serve: prediction log write failed, %d rows dropped: %s", len(batch), error
            )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def read_prediction_log(path: Path = PREDICTION_LOG) -> list[dict[str, Any]]:
    """The logged rows, oldest first, inputs back as arrays (for monitoring and tests)."""
    with sqlite3.connect(path) as connection:
        cursor = connection.execute("SELECT * FROM predictions ORDER BY id")
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    for row in rows:
        shape = tuple(json.loads(row["input_shape"]))
        row["input"] = np.frombuffer(row["input"], dtype=np.uint8).reshape(shape)
        row["probabilities"] = json.loads(row["probabilities"])
    return rows


# --- metrics -----------------------------------------------------------------------------------


class ServingMetrics:
    """Prometheus metrics of one app (its own registry, so tests can run several apps)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlcycle_requests",
            "HTTP requests served",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlcycle_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.predicted = Counter(
            "mlcycle_predictions", "Predicted classes", ["class_name"], registry=self.registry
        )
        self.model_version = Gauge(
            "mlcycle_model_version",
            "The served model version",
            ["model_name"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "mlcycle_prediction_log_dropped",
            "Prediction log records dropped (queue full)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- the app -----------------------------------------------------------------------------------

MEASURED = frozenset({"/predict", "/predict/image"})


class LimitAndMeasure:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a third of the throughput):
    refuses bodies over the limit, by Content-Length or as they stream in, and counts and times
    the predict endpoints."""

    def __init__(self, app: Any, max_bytes: int, metrics: ServingMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        length = dict(scope["headers"]).get(b"content-length", b"0")
        status = 500
        if not length.isdigit() or int(length) > self.max_bytes:
            status = 413
            await JSONResponse(
                {"detail": f"body: over the {self.max_bytes}-byte limit"}, status_code=413
            )(scope, receive, send)
        else:
            received = 0

            async def counted_receive() -> dict:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a missing or lying Content-Length
                    raise InputError("body", f"over the {self.max_bytes}-byte limit", 413)
                return message

            async def noted_send(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, counted_receive, noted_send)
        if scope["path"] in MEASURED:
            self.metrics.requests.labels(scope["path"], str(status)).inc()
            self.metrics.latency.labels(scope["path"]).observe(time.perf_counter() - started)


ERROR_RESPONSES = {
    status: {
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
    for status, text in (
        (400, "Malformed JSON"),
        (413, "Payload too large"),
        (415, "Wrong content type"),
        (422, "Invalid input; `detail` names the field"),
        (503, "No model loaded yet"),
    )
}

PREDICT_BODY_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "additionalProperties": False,
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "description": "Images as nested lists of 0-255 pixel values in the raw data's "
            "shape (H x W x C, or H x W for one channel), or base64 PNG/JPEG strings.",
            "items": {"anyOf": [{"type": "string"}, {"type": "array"}]},
        }
    },
}


def create_app(
    params: ServeParams,
    name: str,
    holder: ModelHolder | None = None,
    prediction_log: PredictionLog | None = None,
    watch: bool = True,
    load_on_start: bool = True,
) -> Any:
    """The FastAPI app. Loads the alias's version at start (in the background, so ``/health``
    answers at once); with ``watch``, follows the alias every ``params.poll_seconds``."""
    holder = holder or ModelHolder(name, params.alias)
    metrics = ServingMetrics()
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_on_start:
            threading.Thread(target=holder.reload, name="model-load", daemon=True).start()
        if watch:
            threading.Thread(
                target=holder.watch,
                args=(params.poll_seconds, stop),
                name="alias-watch",
                daemon=True,
            ).start()
        if prediction_log is not None:
            prediction_log.start()
        yield
        stop.set()
        if prediction_log is not None:
            prediction_log.close()

    app = FastAPI(
        title="mlcycle serving",
        description=f"Predictions from `models:/{name}@{params.alias}`.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.prediction_log = prediction_log
    app.add_middleware(LimitAndMeasure, max_bytes=params.max_body_bytes, metrics=metrics)

    def problem(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, error: InputError) -> JSONResponse:
        return problem(error.status, str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": ("body",), "msg": "invalid"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return problem(422, f"{where}: {first['msg']}")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail))

    def serve_batch(model: ServedModel, endpoint: str, images: np.ndarray) -> Response:
        """``model``: the one the request took at its start (a reload may swap holder.current
        meanwhile; this request finishes on the model that parsed its input)."""
        probabilities = model.predict(images)
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(model.class_names))
        for index in np.flatnonzero(counts):
            metrics.predicted.labels(model.class_names[index]).inc(int(counts[index]))
        if prediction_log is not None:
            prediction_log.record(model, endpoint, images, probabilities)
        body = {
            "model_name": model.name,
            "model_version": model.version,
            "predictions": predictions(model, probabilities),
        }
        # json.dumps directly: FastAPI's generic encoder walks every float (slow for batches)
        return Response(json.dumps(body).encode(), media_type="application/json")

    def current_model() -> ServedModel:
        """The model this request will use to the end, or 503 saying why there is none."""
        model = holder.current
        if model is None:
            raise InputError("model", holder.last_error or "not loaded yet", status=503)
        return model

    @app.post(
        "/predict",
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PREDICT_BODY_SCHEMA}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        """Predict a batch of images."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise InputError(
                "content-type", f"expected application/json, got {content_type or 'none'}", 415
            )
        body = await request.body()  # LimitAndMeasure refuses it past max_body_bytes
        try:
            payload = json.loads(body)
        except RecursionError:
            raise InputError("body", "JSON nested too deeply", 400) from None
        except ValueError as error:  # JSONDecodeError, bad UTF-8, integers of >4300 digits
            raise InputError("body", f"malformed JSON ({str(error)[:120]})", 400) from None
        model = current_model()
        may_hold_bools = b"true" in body or b"false" in body
        return serve_batch(model, "/predict", parse_batch(payload, model, params, may_hold_bools))

    @app.post("/predict/image", responses=ERROR_RESPONSES)
    async def predict_image(file: UploadFile) -> Response:
        """Predict one uploaded PNG or JPEG image."""
        model = current_model()
        pixels = decode_image(await file.read(), "file", params.max_image_side)
        return serve_batch(model, "/predict/image", fit_to_raw(pixels, model.raw_shape)[np.newaxis])

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> Response:
        """A model is loaded and served."""
        model = holder.current
        body = {
            "ready": model is not None,
            "model_name": name,
            "version": model.version if model else None,
            "last_error": holder.last_error,
        }
        return JSONResponse(body, status_code=200 if model else 503)

    @app.get("/metadata", responses={503: ERROR_RESPONSES[503]})
    async def metadata() -> Response:
        """The served version: name, version, alias, data version, params, trained at."""
        return JSONResponse({**current_model().metadata, "last_reload_error": holder.last_error})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        model = holder.current
        if model is not None:
            metrics.model_version.labels(name).set(float(model.version))
        if prediction_log is not None:
            metrics.log_dropped.set(prediction_log.dropped)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", status_code=202, responses={403: ERROR_RESPONSES[422]})
    async def reload(request: Request) -> dict[str, Any]:
        """Load the version now holding the alias (loopback clients only); poll /ready."""
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1", "localhost", "testclient"):
            raise InputError("client", "reload is accepted from this machine only", 403)
        threading.Thread(target=holder.reload, name="model-reload", daemon=True).start()
        return {"reloading": True, "serving": holder.current.version if holder.current else None}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text()

    return app


def check_bind(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: binding to %s: reachable from other machines (serve.host)", host)


def serve(params: ServeParams, name: str, host: str | None = None, port: int | None = None) -> None:
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
        prediction_log=PredictionLog(PREDICTION_LOG, params.log_max_rows, params.log_sample_rate),
    )
    log.info("serve: http://%s:%d (models:/%s@%s)", host, port or params.port, name, params.alias)
    uvicorn.run(app, host=host, port=port or params.port, log_level="warning", access_log=False)

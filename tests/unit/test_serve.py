"""The serving app in-process (FastAPI's TestClient): inputs, errors, metrics, prediction log.

The model is a real network from ``models/`` (untrained: its answers are arbitrary but fixed);
the registry round trip, hot reload and the page are in tests/integration/test_serving.py.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models import build_classifier
from tasks.core.config import load_params
from tasks.core.prediction_log.ids import NOT_LOGGED
from tasks.core.prediction_log.readers import read_prediction_log
from tasks.core.prediction_log.writer import PredictionLog
from tasks.serving.app import create_fixed_app
from tasks.serving.inputs import upload_name
from tasks.serving.model import ModelHolder, ServedModel
from tests.helpers import REPO_ROOT

CLASSES = ("zero", "one", "two")


def served_model(raw_shape=(8, 8, 1), image_size=None, channels=None) -> ServedModel:
    torch.manual_seed(0)
    input_shape = (
        image_size or raw_shape[0],
        image_size or raw_shape[1],
        channels or raw_shape[2],
    )
    module = build_classifier(
        "cnn",
        input_shape,
        len(CLASSES),
        [100.0] * input_shape[2],
        [50.0] * input_shape[2],
        channels=(4, 8),
        hidden_size=8,
        dropout=0.0,
    ).eval()
    return ServedModel(
        name="digits",
        version="7",
        alias="champion",
        module=module,
        class_names=CLASSES,
        raw_shape=raw_shape,
        image_size=image_size,
        channels=channels,
        metadata={"model_name": "digits", "version": "7"},
    )


@pytest.fixture(scope="module")
def serve_params():
    return load_params(REPO_ROOT / "params.yaml").serve.model_copy(
        update={"max_batch": 16, "max_body_bytes": 64 * 1024, "max_image_side": 512}
    )


def make_client(serve_params, model: ServedModel | None, prediction_log=None) -> TestClient:
    holder = ModelHolder("digits", "champion")
    holder.current = model
    app = create_fixed_app(serve_params, "digits", holder, prediction_log)
    return TestClient(app, client=("127.0.0.1", 50000))  # a loopback client, as curl on the box


@pytest.fixture(scope="module")
def client(serve_params):
    with make_client(serve_params, served_model()) as client:
        yield client


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buffer, fmt)
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels (PIL refuses to decode it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 1), dtype=np.uint8)


def test_nested_lists_and_base64_png_give_the_same_prediction(client):
    pixels = image()
    as_lists = client.post("/predict", json={"images": [pixels.tolist(), pixels[..., 0].tolist()]})
    as_png = client.post("/predict", json={"images": [base64.b64encode(png(pixels)).decode()]})
    assert as_lists.status_code == as_png.status_code == 200
    first, second = as_lists.json()["predictions"]
    assert first == second == as_png.json()["predictions"][0]
    assert set(first["probabilities"]) == set(CLASSES)
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert first["class_name"] == CLASSES[first["class_index"]]
    expected = served_model().predict(pixels[np.newaxis])[0]
    assert first["class_index"] == int(expected.argmax())
    assert as_lists.json()["model_version"] == "7"


def test_a_prediction_answer_matches_its_documented_schema(client):
    """/docs shows this schema for the 200 answer of both predict endpoints."""
    import jsonschema

    paths = client.get("/openapi.json").json()["paths"]
    answers = {
        "/predict": client.post("/predict", json={"images": [image().tolist()] * 2}),
        "/predict/image": client.post(
            "/predict/image", files={"file": ("d.png", png(image()), "image/png")}
        ),
    }
    for path, answer in answers.items():
        documented = paths[path]["post"]["responses"]["200"]["content"]["application/json"]
        assert answer.status_code == 200
        jsonschema.validate(answer.json(), documented["schema"])
        assert set(documented["schema"]["properties"]) == set(answer.json())


def test_an_uploaded_image_of_any_size_is_fitted_like_training_data(client):
    big = np.kron(image(), np.ones((4, 4, 1), dtype=np.uint8))  # 32x32, same picture
    response = client.post("/predict/image", files={"file": ("d.png", png(big), "image/png")})
    assert response.status_code == 200
    # the training code's own resize brings it back to 8x8: the same answer as the small one
    small = client.post("/predict", json={"images": [image().tolist()]}).json()
    assert (
        response.json()["predictions"][0]["class_index"] == small["predictions"][0]["class_index"]
    )
    rgb = np.repeat(big, 3, axis=-1)
    jpeg = client.post("/predict/image", files={"file": ("d.jpg", png(rgb, "JPEG"), "image/jpeg")})
    assert jpeg.status_code == 200


def test_raw_shaped_inputs_go_through_the_recorded_preprocessing(serve_params):
    model = served_model(raw_shape=(16, 16, 3), image_size=8, channels=1)
    with make_client(serve_params, model) as client:
        raw = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        response = client.post("/predict", json={"images": [raw.tolist()]})
        assert response.status_code == 200, response.text
        small = client.post("/predict", json={"images": [raw[:8, :8].tolist()]})
        assert small.status_code == 422
        assert "images[0]: expected pixel values of shape 16x16x3, got 8x8x3" in small.text


def raw_json(body: bytes) -> dict:
    """Request kwargs for a body sent as is (JSON that json= could not produce)."""
    return {"content": body, "headers": {"content-type": "application/json"}}


def image_with_first_pixel(literal: bytes) -> bytes:
    """An 8x8 image as JSON, its first pixel written as ``literal`` (NaN, 9999...)."""
    rows = [b"[" + literal + b",0,0,0,0,0,0,0]"] + [b"[0,0,0,0,0,0,0,0]"] * 7
    return b'{"images": [[' + b",".join(rows) + b"]]}"


BAD_REQUESTS = [
    # (description, request kwargs, status, field named in the reason)
    (
        "malformed JSON",
        raw_json(b'{"images": ['),
        400,
        "body: malformed JSON",
    ),
    (
        "wrong content type",
        {"content": b"images", "headers": {"content-type": "text/plain"}},
        415,
        "content-type: expected application/json",
    ),
    ("not an object", {"json": [1, 2]}, 422, "body: expected a JSON object"),
    ("missing images", {"json": {}}, 422, "images: missing"),
    ("unknown field", {"json": {"images": [], "extra": 1}}, 422, "extra: unknown field"),
    (
        "wrong shape",
        {"json": {"images": [np.zeros((8, 7)).tolist()]}},
        422,
        "images[0]: expected pixel values of shape 8x8x1 or 8x8, got 8x7",
    ),
    (
        "ragged",
        {"json": {"images": [[[1, 2], [3]]]}},
        422,
        "images[0]: expected nested lists of numbers",
    ),
    (
        "a number",
        {"json": {"images": [5]}},
        422,
        "images[0]: expected nested lists of pixels or a base64",
    ),
    (
        "strings as pixels",
        {"json": {"images": [[["a"] * 8] * 8]}},
        422,
        "images[0]: expected nested lists of numbers",
    ),
    (
        "booleans as pixels",
        {"json": {"images": [[[True] * 8] * 8]}},
        422,
        "images[0]: expected numbers, got another type",
    ),
    (
        "NaN",
        raw_json(image_with_first_pixel(b"NaN")),
        422,
        "images[0]: holds NaN or infinity",
    ),
    (
        "infinity",
        raw_json(image_with_first_pixel(b"Infinity")),
        422,
        "images[0]: holds NaN or infinity",
    ),
    (
        "out of range",
        {"json": {"images": [np.full((8, 8), 300).tolist()]}},
        422,
        "images[0]: values 300 to 300 out of range; expected 0-255",
    ),
    ("negative", {"json": {"images": [np.full((8, 8), -1).tolist()]}}, 422, "out of range"),
    ("empty batch", {"json": {"images": []}}, 422, "images: empty batch"),
    (
        "batch over the limit",
        {"json": {"images": [np.zeros((8, 8)).tolist()] * 17}},
        422,
        "images: 17 images; at most 16 per request",
    ),
    (
        "payload over the size limit",
        raw_json(b'{"images": "' + b"x" * 70_000 + b'"}'),
        413,
        "body: over the 65536-byte limit",
    ),
    (
        "undecodable base64 image",
        {"json": {"images": [base64.b64encode(b"not an image").decode()]}},
        422,
        "images[0]: not an image PIL can read; expected a PNG or JPEG file",
    ),
    ("not base64", {"json": {"images": ["%%%"]}}, 422, "images[0]: not valid base64"),
    (
        "numeric strings as pixels",
        {"json": {"images": [[["12"] * 8] * 8]}},
        422,
        "images[0]: expected numbers, got another type",
    ),
    (
        "a 400-digit pixel",
        raw_json(image_with_first_pixel(b"9" * 400)),
        422,
        "images[0]: expected nested lists of numbers",
    ),
    (
        "a 5000-digit number",
        raw_json(b'{"images": [' + b"9" * 5000 + b"]}"),
        400,
        "body: malformed JSON",
    ),
    (
        "JSON nested too deeply",
        raw_json(b"[" * 60_000),
        400,
        "body: JSON nested too deeply",
    ),
    (
        "a decompression bomb",
        {"json": {"images": [base64.b64encode(bomb_png()).decode()]}},
        422,
        "images[0]: image too large to decode safely",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "reason"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_short_4xx_naming_the_field(client, request_kwargs, status, reason):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and reason in detail
    assert len(detail) < 300 and "schema" not in detail.lower()


def test_a_body_streamed_without_a_length_is_cut_off_at_the_limit(client):
    def chunks():
        yield b'{"images": "'
        for _ in range(70):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "body: over the 65536-byte limit"


def test_bad_uploads_get_a_4xx(client):
    garbage = client.post("/predict/image", files={"file": ("x.png", b"garbage", "image/png")})
    assert garbage.status_code == 422
    assert (
        garbage.json()["detail"] == "x.png: not an image PIL can read; expected a PNG or JPEG file"
    )
    huge = np.zeros((600, 10, 1), dtype=np.uint8)
    too_big = client.post("/predict/image", files={"file": ("x.png", png(huge), "image/png")})
    assert too_big.status_code == 422
    assert too_big.json()["detail"] == "x.png: image is 10x600, at most 512 a side"
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    wrong = client.post("/predict/image", files={"file": ("x.gif", gif.getvalue(), "image/gif")})
    assert wrong.status_code == 422
    assert wrong.json()["detail"] == "x.gif: expected a PNG or JPEG image, got GIF"
    missing = client.post("/predict/image")
    assert missing.status_code == 422 and missing.json()["detail"].startswith("file:")


UNREADABLE_UPLOADS = [
    # (file name as the browser sends it, bytes, the refusal in full or its start)
    ("digit.txt", b"seven", "digit.txt: not an image PIL can read; expected a PNG or JPEG file"),
    ("C:\\Users\\me\\scan.png", b"", "scan.png: not an image PIL can read; expected a PNG"),
    ("half.png", png(image())[:40], "half.png: not an image PIL can read; expected a PNG"),
    (
        "cut.png",
        png(np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8))[:600],
        "cut.png: a damaged PNG or JPEG image (image file is truncated)",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "detail"), UNREADABLE_UPLOADS, ids=[case[0] for case in UNREADABLE_UPLOADS]
)
def test_an_unreadable_upload_is_refused_by_its_file_name(client, name, data, detail):
    """The page shows this text as is: the file's name and what was expected, and never PIL's
    "cannot identify image file <_io.BytesIO object at 0x...>"."""
    response = client.post("/predict/image", files={"file": (name, data, "text/plain")})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)
    assert "0x" not in response.text and "BytesIO" not in response.text


def test_an_upload_is_named_by_its_base_name_or_the_form_field():
    assert upload_name("digit.png") == "digit.png"
    assert upload_name("/home/me/digit.png") == "digit.png"
    assert upload_name("C:\\me\\digit.png") == "digit.png"
    assert upload_name("bad\x00\nname.png") == "badname.png"
    assert upload_name("x" * 300) == "x" * 100
    assert upload_name(None) == upload_name("") == upload_name(" ") == "file"


def test_the_page_its_icon_and_the_docs_are_served_from_this_app(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for link in ('href="/docs"', 'href="/metadata"', 'rel="icon" href="/favicon.svg"'):
        assert link in page.text
    for icon_url in ("/favicon.svg", "/favicon.ico"):  # .ico: asked for by browsers unbidden
        icon = client.get(icon_url)
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert icon.text.startswith("<svg")
    docs = client.get("/docs")
    assert docs.status_code == 200
    # every asset of the docs page comes from this app: a CDN is a white page offline
    assert "http" not in docs.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert f'"{asset}"' in docs.text
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 100_000
    assert client.get("/redoc").status_code == 404  # its bundle fetches a logo from outside
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/favicon.svg", "/favicon.ico"} & set(paths)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=9)
            | st.dictionaries(st.sampled_from(["images", "x"]), children, max_size=2)
        ),
        max_leaves=80,
    )
)
def test_no_json_payload_gets_a_server_error(client, payload):
    body = json.dumps({"images": payload} if not isinstance(payload, dict) else payload)
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.text
    assert isinstance(response.json().get("detail", ""), str)


def test_openapi_spec_holds_under_schemathesis(serve_params):
    """Generated requests from the app's own OpenAPI spec: never a 5xx, documented statuses,
    content types and bodies (the 200 of /predict as much as the errors)."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    holder = ModelHolder("digits", "champion")
    holder.current = served_model()
    holder.reload = lambda version=None: True  # POST /admin/reload: no registry here
    app = create_fixed_app(serve_params, "digits", holder)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = 0
    for operation in schema.get_all_operations():
        operation = operation.ok()

        @settings(max_examples=40, deadline=None)
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ]
            )

        check()
        checked += 1
    assert checked >= 6


def test_no_model_yet_is_503_with_a_reason(serve_params):
    with make_client(serve_params, None) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        response = client.post("/predict", json={"images": [image().tolist()]})
        assert response.status_code == 503 and "model: not loaded yet" in response.json()["detail"]


def test_metrics_count_requests_latency_classes_and_version(client):
    client.post("/predict", json={"images": [image(3).tolist()] * 2})
    client.post("/predict", json={"images": []})
    text = client.get("/metrics").text
    assert 'mlcycle_requests_total{endpoint="/predict",status="200"}' in text
    assert 'mlcycle_requests_total{endpoint="/predict",status="422"}' in text
    assert 'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.005"}' in text
    assert "mlcycle_predictions_total{class_name=" in text
    assert 'mlcycle_model_version{model_name="digits"} 7.0' in text


def test_reload_is_refused_from_other_machines(serve_params, monkeypatch):
    with make_client(serve_params, served_model()) as client:
        reloads = []
        monkeypatch.setattr(client.app.state.serving.holder, "reload", lambda: reloads.append(1))
        assert client.post("/admin/reload").status_code == 202  # from 127.0.0.1
        remote = TestClient(client.app, client=("10.1.2.3", 5000))
        assert remote.post("/admin/reload").status_code == 403
        time.sleep(0.2)
        assert reloads == [1]


def test_the_watcher_follows_the_alias_and_skips_a_version_that_failed(monkeypatch):
    """The control flow of ModelHolder.watch over a registry whose alias moves; the real
    registry round trip is in tests/integration/test_serving.py."""
    import threading

    import tasks.serving.model as serve

    alias_history = iter(["7", "8", "8", "8", "9", "7"])
    monkeypatch.setattr(serve, "resolve_alias", lambda name, alias: next(alias_history))
    loads = []

    def load(name, alias, version):
        loads.append(version)
        if version == "8":
            raise serve.NoModelError(f"version {version} cannot be served")
        return replace_version(served_model(), version)

    monkeypatch.setattr(serve, "load_served_model", load)
    holder = ModelHolder("digits", "champion")
    holder.current = served_model()  # v7
    stop = threading.Event()
    thread = threading.Thread(target=holder.watch, args=(0.01, stop))
    thread.start()
    deadline = time.monotonic() + 5
    while len(loads) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    # 7 is served (no load); 8 fails once and is not fetched again; 9 loads; back to 7 loads
    assert loads == ["8", "9", "7"]
    assert holder.current.version == "7"


def replace_version(model: ServedModel, version: str) -> ServedModel:
    from dataclasses import replace

    return replace(model, version=version)


def test_prediction_log_records_inputs_and_outputs_off_the_request_path(serve_params, tmp_path):
    log = PredictionLog(tmp_path / "predictions.sqlite", max_rows=1000, flush_s=0.05)
    pixels = [image(seed) for seed in range(3)]
    with make_client(serve_params, served_model(), log) as client:
        answer = client.post("/predict", json={"images": [p.tolist() for p in pixels]}).json()
    rows = read_prediction_log(tmp_path / "predictions.sqlite")  # the app's shutdown flushed
    assert len(rows) == 3
    for row, sent, predicted in zip(rows, pixels, answer["predictions"], strict=True):
        assert np.array_equal(row["input"], sent)
        assert row["class_name"] == predicted["class_name"] and row["model_version"] == "7"
        assert row["endpoint"] == "/predict"


def test_prediction_log_keeps_the_newest_rows_and_never_blocks(tmp_path):
    model = served_model()
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=50, flush_s=0.05).start()
    images = np.stack([image(seed) for seed in range(10)])
    probabilities = model.predict(images)
    started = time.perf_counter()
    for _ in range(30):
        log.record(model, "/predict", images, probabilities)
    assert time.perf_counter() - started < 0.5  # 300 records queued, none written inline
    log.close()
    rows = read_prediction_log(tmp_path / "p.sqlite")
    assert len(rows) == 50 and rows[-1]["id"] == 300 and log.written == 300


SAMPLED_REQUESTS = 2_000
SAMPLING_SEED = 21


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_sampling_logs_the_requests_its_generator_draws_under_the_rate(tmp_path, rate):
    """serve.log_sample_rate: a request is logged exactly when the log's generator draws under
    the rate (a generator of the same seed replays the draws), which at 0.5 is half of them
    within 4 standard deviations; 0 logs none, and 1 logs every request without a draw. The
    ids say which were logged, and the log holds those rows, in order."""
    model = served_model()
    one = image()[np.newaxis]
    probabilities = model.predict(one)
    log = PredictionLog(
        tmp_path / "p.sqlite",
        max_rows=SAMPLED_REQUESTS,
        sample_rate=rate,
        flush_s=0.05,
        rng=random.Random(SAMPLING_SEED),
    ).start()
    answered = [
        log.record(model, "/predict", one, probabilities)[0] for _ in range(SAMPLED_REQUESTS)
    ]
    log.close()
    logged = [not prediction_id.startswith(NOT_LOGGED) for prediction_id in answered]
    replay = random.Random(SAMPLING_SEED)
    if rate == 1.0:
        assert all(logged)
        assert log.rng.random() == replay.random()  # no draw was spent on a request
    else:
        assert logged == [replay.random() < rate for _ in range(SAMPLED_REQUESTS)]
    spread = 4 * math.sqrt(SAMPLED_REQUESTS * rate * (1 - rate))
    assert abs(sum(logged) - rate * SAMPLED_REQUESTS) <= spread, sum(logged)
    rows = read_prediction_log(tmp_path / "p.sqlite")
    kept = [pid for pid, was_logged in zip(answered, logged, strict=True) if was_logged]
    assert [row["prediction_id"] for row in rows] == kept
    assert (log.written, log.dropped) == (len(kept), 0)


@contextmanager
def served_on_a_port(app) -> Iterator[str]:
    """The app under a real uvicorn server on a loopback port, in a thread."""
    import threading

    import uvicorn

    from tests.helpers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_health_answers_at_once_while_a_large_request_decodes(serve_params):
    """Decoding and predicting run in the bounded pool, off the event loop."""
    import threading

    import httpx

    params = serve_params.model_copy(
        update={
            "max_image_side": 4096,
            "max_body_bytes": 8 * 1024 * 1024,
            "max_batch": 256,
            "threads": 2,
        }
    )
    big = base64.b64encode(png(np.full((4096, 4096), 128, dtype=np.uint8))).decode()
    holder = ModelHolder("digits", "champion")
    holder.current = served_model()
    app = create_fixed_app(params, "digits", holder)
    with served_on_a_port(app) as url:
        answered = []
        began = time.perf_counter()
        sender = threading.Thread(
            target=lambda: answered.append(
                httpx.post(f"{url}/predict", json={"images": [big] * 24}, timeout=120)
            )
        )
        sender.start()
        latencies = []
        while sender.is_alive():
            started = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        sender.join()
        busy_s = time.perf_counter() - began
    assert answered[0].status_code == 200, answered[0].text
    # Relative, not a fixed budget (a loaded CI machine slows everything): on the event loop,
    # one /health would wait for most of the decoding.
    assert max(latencies) < busy_s / 5, (
        f"/health took up to {max(latencies) * 1000:.0f} ms of a {busy_s:.1f} s request"
    )
    assert len(latencies) >= 5, "the request finished before /health could be measured"


def test_a_client_that_hangs_up_mid_body_is_one_log_line(serve_params, caplog):
    import socket

    app = make_client(serve_params, served_model()).app
    with served_on_a_port(app) as url, caplog.at_level("INFO"):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000\r\n\r\n" + b'{"images": [' * 10
            )
        time.sleep(1.0)
    gone = [r for r in caplog.records if "disconnected before POST /predict" in r.getMessage()]
    assert len(gone) == 1
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]

"""Labels from serving back into training data: prediction ids, POST /feedback, the log's label
columns, monitoring's window reader, the export to data/external/feedback.npz and its DVC file.

The app runs in-process (FastAPI's TestClient) with a real network from ``models/``, as in
test_serve.py; the prediction log is a real SQLite file written by its real writer thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import CollectParams
from tasks.core.files import read_raw_dataset
from tasks.core.prediction_log.export import export_feedback, npz_bytes
from tasks.core.prediction_log.labels import Label
from tasks.core.prediction_log.readers import read_prediction_log, read_window
from tasks.core.prediction_log.schema import PredictionLogError
from tasks.core.prediction_log.writer import LABELLED_RETENTION, PredictionLog
from tasks.core.refusals import InputError
from tasks.stages.collect import run_collect
from tests.unit.test_serve import CLASSES, image, make_client, served_model


@pytest.fixture(scope="module")
def serve_params():
    from tasks.core.config import load_params
    from tests.helpers import REPO_ROOT

    return load_params(REPO_ROOT / "params.yaml").serve.model_copy(
        update={"max_batch": 4, "max_body_bytes": 64 * 1024}
    )


def new_log(tmp_path: Path, **options) -> PredictionLog:
    return PredictionLog(tmp_path / "predictions.sqlite", **{"max_rows": 1000, **options})


def predict(client, count: int = 3, seed: int = 0) -> list[str]:
    response = client.post(
        "/predict", json={"images": [image(seed + k).tolist() for k in range(count)]}
    )
    assert response.status_code == 200, response.text
    return response.json()["prediction_ids"]


def rows_by_id(path: Path) -> dict[str, dict]:
    return {row["prediction_id"]: row for row in read_prediction_log(path)}


# --- ids and labels round trip --------------------------------------------------------------


def test_predict_feedback_log_and_export_round_trip(serve_params, tmp_path):
    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        response = client.post("/predict", json={"images": [image(k).tolist() for k in range(3)]})
        body = response.json()
        ids = body["prediction_ids"]
        assert len(ids) == len(body["predictions"]) == 3 and len(set(ids)) == 3
        assert all(len(one) == 32 and int(one, 16) >= 0 for one in ids)
        upload = client.post(
            "/predict/image", files={"file": ("d.png", png_of(image(9)), "image/png")}
        )
        assert len(upload.json()["prediction_ids"]) == 1

        one = client.post("/feedback", json={"prediction_id": ids[0], "label": "two"})
        assert one.status_code == 200, one.text
        assert one.json() == {
            "stored": 1,
            "labels": [
                {
                    "prediction_id": ids[0],
                    "label_index": 2,
                    "label_name": "two",
                    "model_version": "7",
                }
            ],
        }
        batch = client.post(
            "/feedback",
            json={
                "items": [
                    {"prediction_id": ids[2], "label": 0},  # an index
                    {"prediction_id": ids[1], "label": "one"},
                ]
            },
        )
        assert batch.status_code == 200, batch.text
        assert [label["label_name"] for label in batch.json()["labels"]] == ["zero", "one"]
        metrics = client.get("/metrics").text
    assert 'mlcycle_feedback_labels_total{class_name="two"} 1.0' in metrics
    assert 'mlcycle_requests_total{endpoint="/feedback",status="200"} 2.0' in metrics

    rows = rows_by_id(log.path)
    for prediction_id, index, name in zip(ids, (2, 1, 0), ("two", "one", "zero"), strict=True):
        row = rows[prediction_id]
        assert (row["label_index"], row["label_name"]) == (index, name)
        assert row["labelled_at"] >= row["logged_at"]
    unlabelled = rows[upload.json()["prediction_ids"][0]]
    assert unlabelled["label_index"] is None

    result = export_feedback(log.path, tmp_path / "feedback.npz", dvc_root=None)
    assert (result.samples, result.written, result.left_out) == (3, True, 0)
    with np.load(tmp_path / "feedback.npz") as exported:
        assert exported["class_names"].tolist() == list(CLASSES)
        assert exported["prediction_ids"].tolist() == ids  # ordered by log id
        assert exported["labels"].tolist() == [2, 1, 0]
        assert exported["images"].dtype == np.uint8
        assert np.array_equal(exported["images"], np.stack([image(k) for k in range(3)]))


def png_of(pixels: np.ndarray) -> bytes:
    from tests.unit.test_serve import png

    return png(pixels)


def test_feedback_right_after_predict_finds_the_prediction_still_queued(serve_params, tmp_path):
    """The writer batches for up to flush_s: the prediction is not in SQLite yet when its
    label arrives; the label waits behind it in the same queue, and ends the writer's wait."""
    log = new_log(tmp_path, flush_s=30.0, batch_size=1000)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client)
        time.sleep(0.05)  # the writer has taken the record and waits for more
        assert log.written == 0
        started = time.perf_counter()
        response = client.post("/feedback", json={"prediction_id": ids[1], "label": "one"})
        assert response.status_code == 200, response.text
        assert time.perf_counter() - started < 5
        assert log.written == 3
        assert rows_by_id(log.path)[ids[1]]["label_name"] == "one"


def test_a_batch_is_stored_whole_or_not_at_all(serve_params, tmp_path):
    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client)
        unknown = "f" * 32
        refused = client.post(
            "/feedback",
            json={
                "items": [
                    {"prediction_id": ids[0], "label": "one"},
                    {"prediction_id": unknown, "label": "one"},
                ]
            },
        )
        assert refused.status_code == 404
        assert refused.json()["detail"].startswith(f"items[1].prediction_id: {unknown} is not in")
        # the good half was not stored: labelling it now is no duplicate
        again = client.post("/feedback", json={"prediction_id": ids[0], "label": "one"})
        assert again.status_code == 200, again.text


def test_labels_are_checked_against_the_version_that_predicted(serve_params, tmp_path):
    """The alias moved to a version with other classes after the prediction: its label is
    still one of the classes of the version that made it."""
    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client)
        client.app.state.serving.holder.current = replace(
            served_model(), version="8", class_names=("cat", "dog", "emu")
        )
        newer = predict(client, 1, seed=5)
        wrong = client.post("/feedback", json={"prediction_id": ids[0], "label": "cat"})
        assert wrong.status_code == 422
        assert "label: 'cat' is not a class of digits v7" in wrong.json()["detail"]
        assert "'zero', 'one', 'two'" in wrong.json()["detail"]
        right = client.post(
            "/feedback",
            json={
                "items": [
                    {"prediction_id": ids[0], "label": "one"},
                    {"prediction_id": newer[0], "label": "emu"},
                ]
            },
        )
        assert right.status_code == 200, right.text
        assert [(x["model_version"], x["label_index"]) for x in right.json()["labels"]] == [
            ("7", 1),
            ("8", 2),
        ]


# --- refusals ----------------------------------------------------------------------------

UNKNOWN = "0123456789abcdef" * 2


def bad_feedback(ids: list[str]) -> list[tuple[str, dict, int, str]]:
    """(description, request kwargs, status, text the detail starts with or holds)."""

    def single(prediction_id=None, label: object = "one") -> dict:
        return {"json": {"prediction_id": prediction_id or ids[0], "label": label}}

    return [
        ("unknown id", single(UNKNOWN), 404, f"prediction_id: {UNKNOWN} is not in"),
        ("not a class", single(label="seven"), 422, "label: 'seven' is not a class of digits v7"),
        ("index past the classes", single(label=3), 422, "label: 3 is not a class"),
        ("negative index", single(label=-1), 422, "label: expected a class name or a class index"),
        ("a boolean label", single(label=True), 422, "label: expected a class name"),
        ("a float label", single(label=1.0), 422, "label: expected a class name"),
        ("an empty label", single(label=""), 422, "label: expected a class name"),
        ("already labelled", single(ids[1]), 409, f"prediction_id: {ids[1]} is already labelled"),
        (
            "the same id twice",
            {"json": {"items": [single()["json"], single(label="two")["json"]]}},
            409,
            f"items[1].prediction_id: {ids[0]} is also in items[0]",
        ),
        ("malformed id", single("xyz"), 422, "prediction_id: expected an id from a /predict"),
        ("id of a number", {"json": {"prediction_id": 5, "label": 1}}, 422, "prediction_id:"),
        ("missing label", {"json": {"prediction_id": ids[0]}}, 422, "label: missing"),
        ("missing id", {"json": {"label": "one"}}, 422, "prediction_id: missing"),
        ("unknown field", {"json": {**single()["json"], "x": 1}}, 422, "x: unknown field"),
        ("not an object", {"json": [single()["json"]]}, 422, "body: expected a JSON object"),
        ("items not a list", {"json": {"items": 3}}, 422, "items: expected a list"),
        ("empty batch", {"json": {"items": []}}, 422, "items: empty batch"),
        ("too many items", {"json": {"items": [single()["json"]] * 5}}, 422, "items: 5 labels"),
        ("an item not an object", {"json": {"items": [7]}}, 422, "items[0]: expected an object"),
        (
            "a bad label in a batch",
            {"json": {"items": [single(label="nine")["json"]]}},
            422,
            "items[0].label: 'nine' is not a class",
        ),
        ("extra next to items", {"json": {"items": [], "y": 1}}, 422, "y: unknown field"),
        (
            "malformed JSON",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            400,
            "body: malformed JSON",
        ),
        (
            "wrong content type",
            {"content": b"{}", "headers": {"content-type": "text/plain"}},
            415,
            "content-type:",
        ),
        (
            "a body over the limit",
            {"json": {"items": [{"prediction_id": ids[0], "label": "x" * 5000}]}},
            413,
            "body: over the",
        ),
    ]


def test_every_refusal_names_the_field_and_is_never_a_5xx(serve_params, tmp_path):
    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client)
        assert (
            client.post("/feedback", json={"prediction_id": ids[1], "label": 1}).status_code == 200
        )
        for description, kwargs, status, reason in bad_feedback(ids):
            response = client.post("/feedback", **kwargs)
            assert response.status_code == status, (description, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and reason in detail, (description, detail)
            assert len(detail) < 400
        assert rows_by_id(log.path)[ids[0]]["label_index"] is None  # nothing slipped through
        text = client.get("/metrics").text
    assert 'mlcycle_requests_total{endpoint="/feedback",status="409"} 2.0' in text


def test_a_prediction_sampled_out_of_the_log_gets_its_id_and_a_404_saying_so(
    serve_params, tmp_path
):
    log = new_log(tmp_path, sample_rate=0.0, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client, 2)
        assert len(ids) == 2 and len(set(ids)) == 2
        response = client.post("/feedback", json={"prediction_id": ids[0], "label": "one"})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith(f"prediction_id: {ids[0]} was not logged")
    assert "serve.log_sample_rate is 0" in detail


def test_an_app_without_a_log_refuses_feedback_with_a_404(serve_params):
    with make_client(serve_params, served_model()) as client:
        ids = predict(client, 1)
        response = client.post("/feedback", json={"prediction_id": ids[0], "label": "one"})
    assert response.status_code == 404 and "keeps no prediction log" in response.json()["detail"]


def test_no_feedback_payload_gets_a_server_error(serve_params, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client)
        values = (
            st.none()
            | st.booleans()
            | st.integers(-5, 5)
            | st.floats()
            | st.text(max_size=6)
            | st.sampled_from([*ids, "zero", "two", UNKNOWN, "n" + UNKNOWN[1:]])
        )
        payloads = st.recursive(
            values,
            lambda children: (
                st.lists(children, max_size=5)
                | st.dictionaries(
                    st.sampled_from(["prediction_id", "label", "items", "x"]), children, max_size=3
                )
            ),
            max_leaves=20,
        )

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(payload=payloads)
        def check(payload):
            response = client.post(
                "/feedback",
                content=json.dumps(payload),
                headers={"content-type": "application/json"},
            )
            assert response.status_code in (200, 400, 404, 409, 413, 422), response.text
            assert isinstance(response.json().get("detail", ""), str)

        check()


def test_feedback_while_the_log_is_not_running_is_a_503_not_a_hang(serve_params, tmp_path):
    log = new_log(tmp_path, flush_s=0.05)
    with make_client(serve_params, served_model(), log) as client:
        ids = predict(client, 1)
        log.close()
        response = client.post("/feedback", json={"prediction_id": ids[0], "label": "one"})
    assert response.status_code == 503
    assert response.json()["detail"] == "feedback: the prediction log is not running; try again"


# --- the log: schema, retention, monitoring's reader ----------------------------------------

OLD_SCHEMA = """
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, logged_at REAL NOT NULL, model_name TEXT NOT NULL,
        model_version TEXT NOT NULL, endpoint TEXT NOT NULL, input_shape TEXT NOT NULL,
        input BLOB NOT NULL, class_index INTEGER NOT NULL, class_name TEXT NOT NULL,
        probabilities TEXT NOT NULL
    )"""


def test_a_log_without_the_label_columns_is_refused_by_name(tmp_path):
    """Logs are not upgraded: one without the columns this code writes is refused, by the
    writer and by the readers, with the file's name."""
    path = tmp_path / "predictions.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(OLD_SCHEMA)
        connection.execute(
            "INSERT INTO predictions VALUES (NULL, 1.0, 'digits', '6', '/predict', '[8, 8, 1]', "
            "?, 0, 'zero', '[1.0, 0.0, 0.0]')",
            (image().tobytes(),),
        )
    connection.close()
    lacks = (
        r"predictions\.sqlite: its predictions table lacks label_index, label_name, "
        r"labelled_at, prediction_id: not a prediction log this mlcycle writes"
    )
    with pytest.raises(PredictionLogError, match=lacks):
        PredictionLog(path, max_rows=100).start()
    with pytest.raises(PredictionLogError, match=r"predictions\.sqlite: not a readable pre"):
        read_window(path, "digits", "6", 10)


def test_a_file_that_is_not_a_prediction_log_is_refused_by_name(tmp_path):
    path = tmp_path / "predictions.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(PredictionLogError, match=r"predictions\.sqlite: not a usable prediction"):
        PredictionLog(path, max_rows=10).start()
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY, x TEXT)")
    connection.close()
    with pytest.raises(PredictionLogError, match=r"other\.sqlite: its predictions table lacks"):
        PredictionLog(other, max_rows=10).start()


def test_a_log_file_removed_under_the_writer_is_started_again_and_counted(tmp_path, caplog):
    """`rm predictions.sqlite*` while serving: the writer notices at its next batch (or
    within flush_s, idle), starts a new file, and counts what the old one took."""
    model = served_model()
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path, max_rows=100, flush_s=0.05).start()
    batch = np.stack([image(k) for k in range(3)])
    before = log.record(model, "/predict", batch, model.predict(batch))
    wait_for(lambda: log.written == 3)
    for file in tmp_path.glob("predictions.sqlite*"):
        file.unlink()
    wait_for(path.is_file)  # no traffic needed
    after = log.record(model, "/predict", batch, model.predict(batch))
    stored = log.submit_labels([Label(after[0], "two")]).result(timeout=10)
    with pytest.raises(InputError, match=r"removed or replaced at .* predictions logged before"):
        log.submit_labels([Label(before[0], "two")]).result(timeout=10)
    log.close()
    assert stored[0].label_name == "two"  # the version's classes were written to the new file
    assert [row["prediction_id"] for row in read_prediction_log(path)] == after
    assert (log.recreated, log.lost, log.written) == (1, 3, 6)
    assert "the 3 rows the old file held are not in it (gap 1" in caplog.text


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("reader", [read_window, read_prediction_log, "read_labelled"])
def test_a_corrupt_log_is_named_by_its_readers(tmp_path, reader):
    from tasks.core.prediction_log.readers import read_labelled

    path = tmp_path / "predictions.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    read = {"read_labelled": read_labelled}.get(reader, reader)
    args = (path, "digits", "7", 10) if read is read_window else (path,)
    with pytest.raises(PredictionLogError, match=r"predictions\.sqlite: not a readable pre"):
        read(*args)


def test_retention_spares_labelled_rows_for_longer(tmp_path):
    model = served_model()
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=5, flush_s=0.05).start()
    one = image()[np.newaxis]
    probabilities = model.predict(one)
    first = log.record(model, "/predict", one, probabilities)[0]
    log.submit_labels([Label(first, 1)]).result(timeout=10)
    for _ in range(10):
        log.record(model, "/predict", one, probabilities)
    deadline = time.monotonic() + 10
    while log.written < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    ids = [row["prediction_id"] for row in read_prediction_log(log.path)]
    assert len(ids) == 6 and ids[0] == first  # the newest 5, and the labelled one
    for _ in range(5 * LABELLED_RETENTION):
        log.record(model, "/predict", one, probabilities)
    log.close()
    rows = read_prediction_log(log.path)
    assert len(rows) == 5 and first not in [row["prediction_id"] for row in rows]


def test_read_window_returns_one_versions_newest_rows_as_arrays(tmp_path):
    model = served_model()
    other = replace(model, version="8")
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=1000, flush_s=0.05).start()
    images = np.stack([image(seed) for seed in range(6)])
    probabilities = model.predict(images)
    ids = log.record(model, "/predict", images[:4], probabilities[:4])
    log.record(other, "/predict", images[4:], probabilities[4:])
    log.submit_labels([Label(ids[2], "zero")]).result(timeout=10)
    log.close()

    window = read_window(log.path, "digits", "7", limit=3)
    assert len(window) == 3
    assert window.images.dtype == np.uint8 and window.images.shape == (3, 8, 8, 1)
    assert np.array_equal(window.images, images[1:4])  # the newest 3, oldest first
    assert window.probabilities.dtype == np.float32 and window.probabilities.shape == (3, 3)
    np.testing.assert_allclose(window.probabilities, probabilities[1:4], atol=1e-6)
    assert window.predicted.tolist() == probabilities[1:4].argmax(axis=1).tolist()
    assert window.labels.tolist() == [-1, 0, -1] and window.labels.dtype == np.int64
    assert window.logged_at.dtype == np.float64 and np.all(np.diff(window.row_ids) > 0)
    assert len(read_window(log.path, "digits", "8", limit=10)) == 2
    assert len(read_window(log.path, "digits", "7", 10, since=time.time() + 60)) == 0
    empty = read_window(tmp_path / "absent.sqlite", "digits", "7", 10)
    assert len(empty) == 0 and empty.images.shape == (0, 0, 0, 0)


def test_read_window_reads_a_100000_row_window_whole(tmp_path):
    # How fast is bench/monitoring.py's read_window_s (speed targets live in bench/).
    path = tmp_path / "p.sqlite"
    PredictionLog(path, max_rows=10).start().close()  # the schema
    pixels = image().tobytes()
    probabilities = json.dumps([0.1] * 10)
    rows = [
        (float(k), "digits", "7", "/predict", "[8, 8, 1]", pixels, k % 10, "x", probabilities)
        for k in range(100_000)
    ]
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO predictions (logged_at, model_name, model_version, endpoint, "
            "input_shape, input, class_index, class_name, probabilities) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    connection.close()
    window = read_window(path, "digits", "7", limit=100_000)
    assert window.images.shape == (100_000, 8, 8, 1) and window.probabilities.shape == (100_000, 10)
    assert window.predicted[:12].tolist() == [k % 10 for k in range(12)]
    np.testing.assert_array_equal(window.images[-1].reshape(-1), image().reshape(-1))


# --- the export ------------------------------------------------------------------------------


def labelled_log(tmp_path: Path, labels: dict[int, str], model=None) -> PredictionLog:
    """A log of 4 predictions, labelled as ``labels`` says ({image index: class name})."""
    model = model or served_model()
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=1000, flush_s=0.05).start()
    images = np.stack([image(seed) for seed in range(4)])
    ids = log.record(model, "/predict", images, model.predict(images))
    if labels:
        log.submit_labels([Label(ids[k], name) for k, name in labels.items()]).result(timeout=10)
    log.close()
    return log


def test_the_export_is_deterministic_and_not_rewritten_when_unchanged(tmp_path):
    log = labelled_log(tmp_path, {3: "one", 0: "two"})
    out = tmp_path / "external" / "feedback.npz"
    first = export_feedback(log.path, out, dvc_root=None)
    assert first.written and first.samples == 2 and first.image_shape == (8, 8, 1)
    content, stamp = out.read_bytes(), out.stat().st_mtime_ns
    time.sleep(0.01)
    again = export_feedback(log.path, out, dvc_root=None)
    assert not again.written and "unchanged" in again.message
    assert out.stat().st_mtime_ns == stamp and out.read_bytes() == content
    elsewhere = export_feedback(log.path, tmp_path / "copy.npz", dvc_root=None)
    assert elsewhere.written and (tmp_path / "copy.npz").read_bytes() == content
    with np.load(out) as arrays:
        assert arrays["labels"].tolist() == [2, 1]  # by log id: image 0, then image 3
    assert npz_bytes({"a": np.arange(3)}) == npz_bytes({"a": np.arange(3)})


def test_no_labelled_rows_writes_no_file(tmp_path):
    log = labelled_log(tmp_path, {})
    out = tmp_path / "feedback.npz"
    result = export_feedback(log.path, out, dvc_root=None)
    assert (result.samples, result.written) == (0, False) and not out.exists()
    assert "no labelled predictions" in result.message
    assert export_feedback(tmp_path / "absent.sqlite", out, dvc_root=None).samples == 0


def test_labels_of_an_older_input_shape_are_left_out_and_counted(tmp_path):
    old = served_model(raw_shape=(16, 16, 1), image_size=8)
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, max_rows=1000, flush_s=0.05).start()
    big = np.zeros((2, 16, 16, 1), dtype=np.uint8)
    old_ids = log.record(replace(old, version="6"), "/predict", big, old.predict(big))
    small = np.stack([image(1)])
    new_ids = log.record(served_model(), "/predict", small, served_model().predict(small))
    log.submit_labels([Label(old_ids[0], "one"), Label(old_ids[1], "two")]).result(timeout=10)
    log.submit_labels([Label(new_ids[0], "zero")]).result(timeout=10)
    log.close()
    result = export_feedback(path, tmp_path / "feedback.npz", dvc_root=None)
    assert (result.samples, result.left_out, result.image_shape) == (1, 2, (8, 8, 1))
    assert "2 labelled images of 16x16x1 left out" in result.message
    with np.load(tmp_path / "feedback.npz") as arrays:
        assert arrays["images"].shape == (1, 8, 8, 1)


def test_the_export_is_versioned_by_dvc_and_collect_adds_it(tmp_path, monkeypatch):
    """export -> `dvc add` -> collect.feedback: the labelled images land in data/raw."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    monkeypatch.chdir(tmp_path)
    external = tmp_path / "data" / "external"
    external.mkdir(parents=True)
    source = external / "source.npz"
    np.savez(
        source,
        images=np.stack([image(seed) for seed in range(20, 26)]),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        class_names=np.array(["two", "one", "zero"]),  # another order than the model's
    )
    log = labelled_log(tmp_path, {1: "zero", 2: "two"})
    out = external / "feedback.npz"
    result = export_feedback(log.path, out, dvc_root=tmp_path)
    assert result.tracked and (external / "feedback.npz.dvc").is_file()
    with Repo(str(tmp_path)) as repo:
        assert repo.status(targets=[str(external / "feedback.npz.dvc")]) == {}
    assert not export_feedback(log.path, out, dvc_root=tmp_path).tracked  # nothing changed

    params = CollectParams(
        source=f"npz:{source}",
        root=str(external),
        download=False,
        feedback=True,
        augment_to=None,
        seed=0,
    )
    collected = run_collect(params, tmp_path / "data" / "raw", external)
    assert (collected.num_samples, collected.feedback_samples) == (8, 2)
    raw = read_raw_dataset(tmp_path / "data" / "raw")
    assert np.array_equal(raw.images[6:], np.stack([image(1), image(2)]))
    assert [raw.class_names[k] for k in raw.labels[6:]] == ["zero", "two"]
    meta = json.loads((tmp_path / "data" / "raw" / "meta.json").read_text())
    assert meta["feedback_samples"] == 2 and meta["num_samples"] == 8

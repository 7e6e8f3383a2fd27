"""Prometheus metrics of the app (the prediction log's losses among them), and the ASGI
middleware that limits bodies and times requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from tasks.core.prediction_log.writer import PredictionLog
from tasks.core.refusals import InputError

# Request latency buckets: the predict endpoints answer in milliseconds; seconds are outliers.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TOO_LARGE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


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
            buckets=LATENCY_BUCKETS_S,
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
        self.feedback = Counter(
            "mlcycle_feedback_labels",
            "True labels stored through /feedback, by class",
            ["class_name"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "mlcycle_prediction_log_dropped",
            "Prediction log records dropped (queue full or write failed)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


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


MEASURED = frozenset({"/predict", "/predict/image", "/feedback"})


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
        status = HTTPStatus.INTERNAL_SERVER_ERROR  # unless the app answers
        if not length.isdigit() or int(length) > self.max_bytes:
            status = TOO_LARGE
            await JSONResponse(
                {"detail": f"body: over the {self.max_bytes}-byte limit"}, status_code=TOO_LARGE
            )(scope, receive, send)
        else:
            received = 0

            async def counted_receive() -> dict:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a missing or lying Content-Length
                    raise InputError("body", f"over the {self.max_bytes}-byte limit", TOO_LARGE)
                return message

            async def noted_send(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, counted_receive, noted_send)
        if scope["path"] in MEASURED:
            self.metrics.requests.labels(scope["path"], str(int(status))).inc()
            self.metrics.latency.labels(scope["path"]).observe(time.perf_counter() - started)

"""Prometheus metrics of the app, and the ASGI middleware that limits bodies and times requests."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse

from tasks.core.refusals import InputError


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
        self.feedback = Counter(
            "mlcycle_feedback_labels",
            "True labels stored through /feedback, by class",
            ["class_name"],
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

"""Request IDs, X-Response-Time, Prometheus metrics and the access log, as one ASGI
middleware, so streaming responses are measured to their last byte."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genserve.bridge.auth import key_id_var
from genserve.bridge.request_id import REQUEST_ID_HEADER, accept_request_id, request_id_var

logger = logging.getLogger("genserve.bridge.access")

CLIENT_CLOSED_REQUEST = 499  # nginx's code: no answer, the client left first
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class BridgeMetrics:
    """The bridge's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "genserve_bridge_requests",
            "HTTP requests by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "genserve_bridge_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "genserve_bridge_time_to_first_byte_seconds",
            "Time to the first body byte: first token or first media chunk.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "genserve_bridge_in_flight_requests", "Requests being served.", registry=self.registry
        )
        self.tokens = Counter(
            "genserve_bridge_tokens_generated",
            "Completion tokens relayed to HTTP clients.",
            registry=self.registry,
        )


def route_template(app: Any, scope: Scope) -> str:
    """The matched route's path template, so metrics do not explode per prompt."""
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", scope["path"]))
    return "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: BridgeMetrics, router_app: Any) -> None:
        self._app = app
        self._metrics = metrics
        self._router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = accept_request_id(headers.get(REQUEST_ID_HEADER.lower()))
        request_id_var.set(request_id)
        route = route_template(self._router_app, scope)
        method = scope["method"]
        started = time.perf_counter()
        status = 500
        responded = False
        first_byte: float | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responded, first_byte
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                elapsed_ms = (time.perf_counter() - started) * 1000
                extra = [
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                    (b"X-Response-Time", f"{elapsed_ms:.1f}ms".encode()),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            elif (
                message["type"] == "http.response.body"
                and first_byte is None
                and message.get("body")
            ):
                first_byte = time.perf_counter() - started
            await send(message)

        self._metrics.in_flight.inc()
        try:
            await self._app(scope, receive, send_with_headers)
            if not responded:  # the app only returns without an answer for a client gone
                status = CLIENT_CLOSED_REQUEST
        finally:
            self._metrics.in_flight.dec()
            total = time.perf_counter() - started
            self._metrics.requests.labels(route, method, str(status)).inc()
            self._metrics.latency.labels(route, method).observe(total)
            if first_byte is not None:
                self._metrics.first_byte.labels(route, method).observe(first_byte)
            if route != "/metrics":
                logger.info(
                    "%s %s %d total_ms=%.1f ttfb_ms=%s key=%s",
                    method,
                    scope["path"],
                    status,
                    total * 1000,
                    f"{first_byte * 1000:.1f}" if first_byte is not None else "-",
                    key_id_var.get() or "-",
                )

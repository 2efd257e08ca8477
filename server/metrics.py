"""The gRPC server's Prometheus metrics, served on their own HTTP port.

Fed by the telemetry interceptor (one CallRecord per RPC) and read from the registry
(queue depth per model) at scrape time. One CollectorRegistry per server, so several
servers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from genserve.server.interceptors.telemetry import CallRecord
from genserve.server.registry import ModelRegistry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _QueueDepth(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        queued = GaugeMetricFamily(
            "genserve_model_queue_depth",
            "Requests waiting per loaded model.",
            labels=["modality", "model"],
        )
        in_flight = GaugeMetricFamily(
            "genserve_model_in_flight",
            "Requests running on the model now, per loaded model.",
            labels=["modality", "model"],
        )
        memory = GaugeMetricFamily(
            "genserve_model_memory_bytes",
            "Weights and buffers held per loaded model.",
            labels=["modality", "model"],
        )
        cancelled = CounterMetricFamily(
            "genserve_model_cancelled_requests",
            "Requests abandoned part-way because their caller left, per loaded model.",
            labels=["modality", "model"],
        )
        decoded = CounterMetricFamily(
            "genserve_model_tokens_decoded",
            "Tokens a text engine decoded, cancelled requests included, per loaded model.",
            labels=["modality", "model"],
        )
        for entry in self._models.entries():
            if entry.engine is None:
                continue
            labels = [entry.modality.value, entry.name]
            stats = entry.engine.stats()
            queued.add_metric(labels, float(stats.queued))
            in_flight.add_metric(labels, float(stats.in_flight))
            memory.add_metric(labels, float(entry.resident_bytes))
            cancelled.add_metric(labels, float(stats.cancelled))
            decoded.add_metric(labels, float(stats.tokens_generated))
        yield from (queued, in_flight, memory, cancelled, decoded)


class ServerMetrics:
    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "genserve_grpc_requests",
            "RPCs by method and final status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.requests_by_key = Counter(
            "genserve_grpc_requests_by_key",
            "RPCs by caller key id ('-' without auth) and final status code.",
            ["key", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "genserve_grpc_request_duration_seconds",
            "RPC time, to the end of the stream.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_message = Histogram(
            "genserve_grpc_time_to_first_message_seconds",
            "Time to the first response message: first token, header or progress.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "genserve_grpc_in_flight_requests", "RPCs being served.", registry=self.registry
        )
        self.tokens = Counter(
            "genserve_tokens_generated", "Completion tokens generated.", registry=self.registry
        )
        self.registry.register(_QueueDepth(models))
        self._http: Any = None

    def track_in_flight(self) -> AbstractContextManager[Any]:
        return self.in_flight.track_inprogress()

    def __call__(self, record: CallRecord) -> None:
        self.requests.labels(record.method, record.status_code.name).inc()
        self.requests_by_key.labels(record.details.key_id or "-", record.status_code.name).inc()
        self.latency.labels(record.method).observe(record.response_time_ms / 1000)
        if record.time_to_first_message_ms is not None:
            self.first_message.labels(record.method).observe(record.time_to_first_message_ms / 1000)
        if record.details.completion_tokens and record.method.endswith("TextService/Generate"):
            self.tokens.inc(record.details.completion_tokens)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns its port (0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

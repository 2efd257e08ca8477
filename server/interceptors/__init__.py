"""Server interceptors, outermost first: request ID, telemetry (timing + usage log), errors."""

from genserve.server.interceptors.errors import ErrorInterceptor
from genserve.server.interceptors.request_id import RequestIdInterceptor
from genserve.server.interceptors.telemetry import CallRecord, TelemetryInterceptor

__all__ = ["CallRecord", "ErrorInterceptor", "RequestIdInterceptor", "TelemetryInterceptor"]

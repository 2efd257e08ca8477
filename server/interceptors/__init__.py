"""Server interceptors, outermost first: request ID, telemetry (timing + usage log), errors."""

from server.interceptors.errors import ErrorInterceptor
from server.interceptors.request_id import RequestIdInterceptor
from server.interceptors.telemetry import CallRecord, TelemetryInterceptor

__all__ = ["CallRecord", "ErrorInterceptor", "RequestIdInterceptor", "TelemetryInterceptor"]

"""The bridge's request ID: from X-Request-ID or new, in a contextvar for the logs."""

from __future__ import annotations

from genserve.server.interceptors.request_id import accept_request_id
from genserve.server.request_context import current_request_id, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"

__all__ = ["REQUEST_ID_HEADER", "accept_request_id", "current_request_id", "request_id_var"]

"""The SDK's errors: `GenServeError`, one subclass per gRPC status a caller handles
differently.

Every error carries the gRPC status code, the server's message and the request ID, so a
report from a user can be joined with the server's logs and usage rows.
"""

from __future__ import annotations

from typing import Any

import grpc

from .retry import retry_after_s, trailing_metadata


class GenServeError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, request_id: str | None) -> None:
        super().__init__(f"{code.name}: {message} (request_id={request_id or '-'})")
        self.code = code
        self.message = message
        self.request_id = request_id


class InvalidArgumentError(GenServeError):
    """The request broke a limit; the message names the field and the limit. Also raised
    before sending, without a request ID, for a value the SDK can tell is wrong (an enum
    name the proto does not have)."""


class UnauthenticatedError(GenServeError):
    pass


class PermissionDeniedError(GenServeError):
    """The API key is valid but may not use this model or modality."""


class NotFoundError(GenServeError):
    pass


class ResourceExhaustedError(GenServeError):
    """The model's queue is full, or the key is over its budget: retry after
    `retry_after_s` (the server's wait, when it named one)."""

    retry_after_s: float | None = None


class UnavailableError(GenServeError):
    """Passing: the server is down, starting or stopping. Retried before any output."""


class FailedPreconditionError(GenServeError):
    """The model failed to load or was unloaded: not retried; an operator must act."""


class DeadlineExceededError(GenServeError):
    pass


class RequestCancelledError(GenServeError):
    """The server cancelled the call (it is shutting down). Named so that it does not
    shadow asyncio.CancelledError, which cancels the caller's own task."""


class InternalError(GenServeError):
    """A server bug; the request ID finds the traceback in the server's log."""


class IntegrityError(GenServeError):
    """The received file does not match the size and sha256 the server announced."""


ERROR_BY_CODE: dict[grpc.StatusCode, type[GenServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
}


def from_rpc_error(error: Any, request_id: str | None) -> GenServeError:
    """A grpc.RpcError (sync or aio: both are grpc.Call) as the SDK's error."""
    code: grpc.StatusCode = error.code()
    message = error.details() or code.name
    result = ERROR_BY_CODE.get(code, InternalError)(code, message, request_id)
    if isinstance(result, ResourceExhaustedError):
        result.retry_after_s = retry_after_s(trailing_metadata(error))
    return result

"""One exception taxonomy, mapped once to gRPC status codes and HTTP statuses.

Handlers raise these; the error interceptor turns them into gRPC statuses, and the
REST bridge turns gRPC statuses into HTTP ones with the same table.
"""

from __future__ import annotations

import grpc

from genserve.contract import metadata
from genserve.contract.spec import InvalidField

# Trailing metadata of a refusal that may be retried (see genserve.contract.metadata).
RETRY_AFTER_METADATA_KEY = metadata.RETRY_AFTER
RETRY_AFTER_MS_METADATA_KEY = metadata.RETRY_AFTER_MS


class ServingError(Exception):
    """Base of every error a caller may see. The message is safe to show to clients."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retry_after_s: float | None = None  # sent as `retry-after` (s) and `retry-after-ms`


class InvalidArgument(ServingError):
    """A request field is out of bounds. The message names the field and the limit."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field

    @classmethod
    def of(cls, invalid: InvalidField) -> InvalidArgument:
        """The contract's InvalidField (raised by specs and hooks), as the server's error."""
        return cls(invalid.field, invalid.problem)


class Unauthenticated(ServingError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """A known caller whose key may not use this model or modality."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ServingError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServingError):
    """The model's request queue is full; the caller may retry later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FailedPrecondition(ServingError):
    """The model cannot serve until an operator acts (it failed to load, or was
    unloaded): clients must not retry it as they would a transient UNAVAILABLE."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServingError):
    """Passing: a model still loading, or the server shutting down. Clients may retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retry_after_s = 1.0


class DeadlineExceeded(ServingError):
    """Something we waited on (an upstream server, say) took longer than allowed."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(ServingError):
    """What the caller was reading changed under it (a job re-run after a restart made
    other bytes): it must start again from the beginning."""

    grpc_code = grpc.StatusCode.ABORTED


class OutOfRange(ServingError):
    """An offset past the end of a finished file."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class Cancelled(ServingError):
    """The work was cancelled (a job, by its owner)."""

    grpc_code = grpc.StatusCode.CANCELLED


class RecordedError(ServingError):
    """An error recorded earlier (a failed job's), raised again with its own code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code


# gRPC status -> HTTP status, for the REST bridge. Anything not listed is a 500.
HTTP_STATUS_BY_GRPC_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 416,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_for(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_GRPC_CODE.get(code, 500)

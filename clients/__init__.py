"""genserve's Python clients: the SDK (sync and async), the `genserve` CLI, the UI.

from genserve.client import GenServe
with GenServe("localhost:50051") as gs:
    for delta in gs.text.stream("What is FastAPI?"):
        print(delta, end="")
    gs.image.generate("a cozy living room", steps=10).save("room.png")
"""

from genserve.client.async_client import AsyncGenServe
from genserve.client.errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    GenServeError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from genserve.client.results import (
    MediaHeader,
    MediaResult,
    ModelInfo,
    Progress,
    TextResult,
    Timings,
)
from genserve.client.sync_client import GenServe

__all__ = [
    "AsyncGenServe",
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GenServe",
    "GenServeError",
    "IntegrityError",
    "InternalError",
    "InvalidArgumentError",
    "MediaHeader",
    "MediaResult",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "ResourceExhaustedError",
    "TextResult",
    "Timings",
    "UnauthenticatedError",
    "UnavailableError",
]

"""genserve's Python clients: the SDK (sync and async), the `genserve` CLI, the UI.

from clients import GenServe
with GenServe("localhost:50051") as gs:
    for delta in gs.text.stream("What is FastAPI?"):
        print(delta, end="")
    gs.image.generate("a cozy living room", steps=10).save("room.png")
"""

from clients.async_client import AsyncGenServe
from clients.errors import (
    CancelledError,
    DeadlineExceededError,
    GenServeError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from clients.results import MediaHeader, MediaResult, ModelInfo, Progress, TextResult, Timings
from clients.sync_client import GenServe

__all__ = [
    "AsyncGenServe",
    "CancelledError",
    "DeadlineExceededError",
    "GenServe",
    "GenServeError",
    "IntegrityError",
    "InternalError",
    "InvalidArgumentError",
    "MediaHeader",
    "MediaResult",
    "ModelInfo",
    "NotFoundError",
    "Progress",
    "ResourceExhaustedError",
    "TextResult",
    "Timings",
    "UnauthenticatedError",
    "UnavailableError",
]

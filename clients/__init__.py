"""genserve's Python clients: the SDK (sync and async), the `genserve` CLI, the UI.

from genserve.client import GenServe
from genserve.contract.modalities.image import IMAGE

with GenServe("localhost:50051") as gs:
    for delta in gs.text.stream("What is FastAPI?"):      # any modality, by name
        print(delta, end="")
    image = gs.media_calls(IMAGE)                         # typed: the proto's fields
    image.with_options(on_progress=print).generate(
        "a cozy living room", num_inference_steps=10
    ).save("room.png")
"""

# The contract's plain events, as the SDK hands them out.
from genserve.contract.events import Chunk, Final, Header, Progress, Timings
from genserve.contract.modalities.transcription import Segment

from .async_client import AsyncGenServe, AsyncStreamCalls, AsyncUnaryCalls
from .calls import CallOptions, Kind
from .errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    GenServeError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .results import Catalog, MediaResult, ModelInfo, PiecesResult, TextResult, Transcript
from .sync_client import GenServe, StreamCalls, UnaryCalls

__all__ = [
    "AsyncGenServe",
    "AsyncStreamCalls",
    "AsyncUnaryCalls",
    "CallOptions",
    "Catalog",
    "Chunk",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "Final",
    "GenServe",
    "GenServeError",
    "Header",
    "IntegrityError",
    "InternalError",
    "InvalidArgumentError",
    "Kind",
    "MediaResult",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PiecesResult",
    "Progress",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "Segment",
    "StreamCalls",
    "TextResult",
    "Timings",
    "Transcript",
    "UnaryCalls",
    "UnauthenticatedError",
    "UnavailableError",
]

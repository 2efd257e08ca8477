"""Per-RPC context: the request ID and the call record, carried in contextvars.

Set by the interceptors at the start of each RPC; everything running inside the call
(servicers, engines, worker threads started with asyncio.to_thread) sees them.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

from genserve.contract import metadata

REQUEST_ID_METADATA_KEY = metadata.REQUEST_ID
NO_REQUEST_ID = "-"

request_id_var: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST_ID)
# When the request was made (time.time()), where it is not now: a job's re-run keeps its
# submission's time, so its file (whose generation record holds it) is the same bytes.
request_time_var: ContextVar[float | None] = ContextVar("request_time", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str:
    return request_id_var.get()


def current_request_time() -> float | None:
    return request_time_var.get()


@dataclass
class CallDetails:
    """What a servicer learns about a call that the interceptors cannot see.

    Written by servicers (token counts, model timings), read by the usage log.
    """

    model: str | None = None  # the model that served it, by name
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queued_ms: float | None = None
    inference_ms: float | None = None
    encoding_ms: float | None = None
    key_id: str | None = None  # the caller's key id (never its secret), set by auth
    replica: str | None = None  # the Ray Serve replica that served it (placement = "ray")
    upstream_ms: float | None = None  # a model served elsewhere: time spent on its server
    deadline: float | None = None  # the caller's gRPC deadline, on time.monotonic()
    job_id: str | None = None  # a JobService call's job, or a job's own run
    extra: dict[str, str] = field(default_factory=dict)


call_details_var: ContextVar[CallDetails | None] = ContextVar("call_details", default=None)


def current_call_details() -> CallDetails:
    """The running call's details; a throwaway record outside an RPC."""
    details = call_details_var.get()
    return details if details is not None else CallDetails()


def seconds_left() -> float | None:
    """Until the running call's deadline; None when the caller set none."""
    deadline = current_call_details().deadline
    return None if deadline is None else deadline - time.monotonic()

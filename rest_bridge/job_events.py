"""A job's events as Server-Sent Events, from JobService.Watch.

Events: `header`, `progress`, `chunk` ({offset, size}; with `data_b64` when asked),
`final`, and `error` (the job failed, was cancelled or expired: its code and message).
Each event's `id` is the byte offset reached, so a client that reconnects with
`Last-Event-ID: N` resumes with Watch(from_offset=N): the header again, the last progress,
then exactly the bytes from N. A comment every 15 s keeps proxies from closing the stream.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sse_starlette import EventSourceResponse

from genserve.bridge.convert import event_dict
from genserve.bridge.streams import SSE_PING_S, Sse, StreamError, sse_error


def chunk_data(chunk: Any, with_bytes: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"offset": chunk.offset, "size": len(chunk.data)}
    if with_bytes:
        data["data_b64"] = base64.b64encode(chunk.data).decode()
    return data


async def job_events(call: Any, from_offset: int, with_bytes: bool) -> AsyncIterator[Sse]:
    offset = from_offset
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            if kind == "chunk":
                offset = event.chunk.offset + len(event.chunk.data)
                data = chunk_data(event.chunk, with_bytes)
            else:
                data = event_dict(getattr(event, kind))
            yield {"id": str(offset), "event": kind, "data": json.dumps(data)}
    except grpc.aio.AioRpcError as error:
        yield {"id": str(offset), **sse_error(StreamError.of(error))}
    finally:
        call.cancel()  # a no-op after the end; the client left otherwise


def job_events_response(call: Any, from_offset: int, with_bytes: bool) -> EventSourceResponse:
    return EventSourceResponse(job_events(call, from_offset, with_bytes), ping=SSE_PING_S)

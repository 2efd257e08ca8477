"""Relaying gRPC streams over HTTP: media files chunk by chunk, events as SSE.

A response starts only once the stream's first event arrived, so an error the server
raises before any output (bad input, a full queue) still becomes a proper HTTP status.
When the HTTP client goes away, the gRPC call is cancelled, and the server stops: a
streamed body's generator ends its call, and the handler's task is cancelled (see
disconnect.py) where nothing is streamed yet.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from genserve.bridge.convert import event_dict
from genserve.bridge.errors import BridgeError, openai_error_body
from genserve.bridge.request_id import current_request_id
from genserve.server.errors import http_status_for
from genserve.v1 import common_pb2

logger = logging.getLogger(__name__)

# One Server-Sent Event, as OpenAPI tools (schemathesis among them) read an event stream.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}

_UNSAFE_FILE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_name(name: str, fallback: str) -> str:
    """A header-safe file name: the server's name, stripped to a plain token."""
    cleaned = _UNSAFE_FILE_NAME_CHARS.sub("", name).lstrip(".")[:100]
    return cleaned or fallback


async def first_event(call: Any) -> Any:
    """Reads one event; the call is cancelled if the caller gives up meanwhile."""
    try:
        event = await call.read()
    except BaseException:
        call.cancel()
        raise
    if event is grpc.aio.EOF:
        raise BridgeError(502, "INTERNAL", "the server ended the stream without output")
    return event


@contextmanager
def ends_with(call: Any) -> Iterator[None]:
    """Whatever ends the block (the stream's end, an error, the task cancelled because the
    client left), the gRPC call ends with it; a no-op on a finished call."""
    try:
        yield
    finally:
        call.cancel()


async def until_end(call: Any) -> None:
    """Reads the stream to its end after the final event, so the call finishes as OK
    rather than being cancelled while the server sends its status."""
    while await call.read() is not grpc.aio.EOF:
        pass


async def media_file_response(call: Any, attachment: bool) -> StreamingResponse:
    """The file, streamed as the chunks arrive, typed by the stream's header event."""
    event = await first_event(call)
    while not event.HasField("header"):  # progress may precede the header
        event = await first_event(call)
    header: common_pb2.MediaHeader = event.header

    async def body() -> AsyncIterator[bytes]:
        try:
            while (next_event := await call.read()) is not grpc.aio.EOF:
                if next_event.HasField("chunk"):
                    yield next_event.chunk.data
        finally:
            call.cancel()  # a no-op after the end; stops the server when the client left

    disposition = "attachment" if attachment else "inline"
    name = safe_file_name(header.file_name, "genserve-output")
    return StreamingResponse(
        body(),
        media_type=header.mime_type,
        headers={"Content-Disposition": f'{disposition}; filename="{name}"'},
    )


def media_sse_response(call: Any, first: Any) -> EventSourceResponse:
    """header / progress / chunk (base64) / final events, then the stream ends."""

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            event = first
            while event is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "chunk":
                    data = {
                        "offset": event.chunk.offset,
                        "data_b64": base64.b64encode(event.chunk.data).decode(),
                    }
                else:
                    data = event_dict(getattr(event, kind))
                yield {"event": kind, "data": json.dumps(data)}
                event = await call.read()
        except grpc.aio.AioRpcError as error:
            yield sse_error(error)
        finally:
            call.cancel()

    return EventSourceResponse(events(), ping=15)


def sse_error(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """An error after the stream began: the status is already sent, so it is an event."""
    body = {
        "code": error.code().name,
        "status": http_status_for(error.code()),
        "message": error.details() or error.code().name,
        "request_id": current_request_id(),
    }
    return {"event": "error", "data": json.dumps(body)}


def openai_sse_error(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The same in OpenAI's shape, `data: {"error": {...}}`, which its SDK raises as an
    APIError; the stream ends after it."""
    code = error.code()
    body = openai_error_body(http_status_for(code), code.name, error.details() or code.name)
    return {"data": json.dumps(body)}

"""Relaying gRPC streams over HTTP: one relay for text streams (chat deltas, transcript
segments), one for media streams (files chunk by chunk), each as a whole answer or as SSE.

A response starts only once the stream's first event arrived, so an error the server
raises before any output (bad input, a full queue) still becomes a proper HTTP status.
When the HTTP client goes away, the gRPC call is cancelled, and the server stops: a
streamed body's generator ends its call, and the handler's task is cancelled (see
disconnect.py) where nothing is streamed yet.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from genserve.bridge.convert import event_dict
from genserve.bridge.errors import BridgeError, openai_error_body
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.request_id import current_request_id
from genserve.contract import ModalitySpec
from genserve.server.errors import http_status_for

SSE_PING_S = 15  # keeps proxies from closing a quiet stream (a long prefill, a slow step)
# One Server-Sent Event, as OpenAPI tools (schemathesis among them) read an event stream.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}
Sse = dict[str, str]  # one event: {"event": name, "data": JSON}, as sse_starlette sends it

_UNSAFE_FILE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_name(name: str, fallback: str) -> str:
    """A header-safe file name: the server's name, stripped to a plain token."""
    cleaned = _UNSAFE_FILE_NAME_CHARS.sub("", name).lstrip(".")[:100]
    return cleaned or fallback


# -- a call's life ----------------------------------------------------------------------


async def next_event(call: Any) -> Any:
    """Reads one event; the call is cancelled if the caller gives up meanwhile."""
    try:
        event = await call.read()
    except BaseException:
        call.cancel()
        raise
    if event is grpc.aio.EOF:
        raise BridgeError(502, "INTERNAL", "the server ended the stream before its final event")
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


# -- errors once a stream began: the 200 is sent, so the error is an event ---------------


@dataclass(frozen=True)
class StreamError:
    status: int
    code: str
    message: str

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError | BridgeError) -> StreamError:
        if isinstance(error, BridgeError):
            return cls(error.status, error.code, error.message)
        code = error.code()
        return cls(http_status_for(code), code.name, error.details() or code.name)


def sse_error(error: StreamError) -> Sse:
    body = {
        "code": error.code,
        "status": error.status,
        "message": error.message,
        "request_id": current_request_id(),
    }
    return {"event": "error", "data": json.dumps(body)}


def openai_sse_error(error: StreamError) -> Sse:
    """OpenAI's shape, `data: {"error": {...}}`, which its SDK raises as an APIError; the
    stream ends after it."""
    return {"data": json.dumps(openai_error_body(error.status, error.code, error.message))}


# -- text streams -----------------------------------------------------------------------


@dataclass(frozen=True)
class TextAnswer:
    """A text stream, whole: its pieces (TextDelta, TranscriptSegment...) and final event."""

    pieces: tuple[Any, ...]
    final: Any
    join: Callable[[Iterable[str]], str]  # the spec's: deltas as they are, segments spaced

    @property
    def text(self) -> str:
        return self.join(piece.text for piece in self.pieces)


class SseShape(Protocol):
    """How a route words a text stream's events (the seed's, OpenAI's chunks)."""

    def opening(self) -> list[Sse]: ...

    def piece(self, piece: Any) -> Sse: ...

    def closing(self, final: Any) -> list[Sse]: ...

    def error(self, error: StreamError) -> Sse: ...


class TextRelay:
    """A text stream: events whose oneof case is `piece` (each with a `.text`), then one
    `final` event."""

    def __init__(self, spec: ModalitySpec[Any, Any], metrics: BridgeMetrics) -> None:
        self._piece = spec.piece
        self._join = spec.join
        self._metrics = metrics

    async def fold(self, call: Any, first: Any) -> TextAnswer:
        """The whole stream, read to its status."""
        pieces = []
        event = first
        with ends_with(call):
            while (kind := event.WhichOneof("event")) == self._piece:
                pieces.append(getattr(event, kind))
                event = await next_event(call)
            final = self._final(event, kind)
            await until_end(call)
        return TextAnswer(tuple(pieces), final, self._join)

    def sse(self, call: Any, first: Any, shape: SseShape) -> EventSourceResponse:
        return EventSourceResponse(self._events(call, first, shape), ping=SSE_PING_S)

    async def _events(self, call: Any, first: Any, shape: SseShape) -> AsyncIterator[Sse]:
        try:
            for opening in shape.opening():
                yield opening
            event = first
            while (kind := event.WhichOneof("event")) == self._piece:
                yield shape.piece(getattr(event, kind))
                event = await next_event(call)
            final = self._final(event, kind)
            await until_end(call)
            for closing in shape.closing(final):
                yield closing
        except (grpc.aio.AioRpcError, BridgeError) as error:
            yield shape.error(StreamError.of(error))
        finally:
            call.cancel()

    def _final(self, event: Any, kind: str | None) -> Any:
        if kind != "final":
            raise BridgeError(502, "INTERNAL", f"the server sent a {kind} event in a text stream")
        final = event.final
        if "usage" in final.DESCRIPTOR.fields_by_name:  # text generation counts its tokens
            self._metrics.tokens.inc(final.usage.completion_tokens)
        return final


class SeedEvents:
    """The seed routes' events: each event's oneof case names it ("delta", "segment",
    "final"), its data is the message as JSON."""

    def __init__(self, piece: str) -> None:
        self._piece = piece

    def opening(self) -> list[Sse]:
        return []

    def piece(self, piece: Any) -> Sse:
        return {"event": self._piece, "data": json.dumps(event_dict(piece))}

    def closing(self, final: Any) -> list[Sse]:
        return [{"event": "final", "data": json.dumps(event_dict(final))}]

    def error(self, error: StreamError) -> Sse:
        return sse_error(error)


# -- media streams ----------------------------------------------------------------------


async def media_file_response(call: Any, attachment: bool) -> StreamingResponse:
    """The file, streamed as the chunks arrive, typed by the stream's header event."""
    event = await next_event(call)
    while not event.HasField("header"):  # progress may precede the header
        event = await next_event(call)
    header = event.header

    async def body() -> AsyncIterator[bytes]:
        try:
            while (next_one := await call.read()) is not grpc.aio.EOF:
                if next_one.HasField("chunk"):
                    yield next_one.chunk.data
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

    async def events() -> AsyncIterator[Sse]:
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
            yield sse_error(StreamError.of(error))
        finally:
            call.cancel()

    return EventSourceResponse(events(), ping=SSE_PING_S)

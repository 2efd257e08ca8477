"""Request bodies refused early: a 413 from Content-Length before a byte is read, or once a
chunked body grows past the route's cap, so an oversized upload never sits in memory.

The caps come from the specs and the server's limits: a route that takes a file may carry
the largest upload its spec allows; a JSON body carries text, whose longest bounded field
(escaped) bounds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genserve.bridge.disconnect import DISCONNECT
from genserve.bridge.errors import error_body
from genserve.bridge.limits import ServerLimits
from genserve.contract import SPECS, ModalitySpec

MiB = 1024 * 1024
# What surrounds the bounded content: form fields, part headers and boundaries in a
# multipart upload; keys, numbers and message envelopes in JSON.
MULTIPART_SLACK = MiB
JSON_SLACK = MiB
# json.dumps (ensure_ascii) writes a character outside the BMP as two \uXXXX escapes.
JSON_BYTES_PER_CHAR = 12


@dataclass(frozen=True)
class BodyCaps:
    """Bytes a request body may hold: per path, else the default."""

    default: int
    by_path: Mapping[str, int] = field(default_factory=dict)

    def for_path(self, path: str) -> int:
        return self.by_path.get(path, self.default)


def body_caps(
    limits: ServerLimits, upload_routes: Mapping[str, ModalitySpec[Any, Any]] | None = None
) -> BodyCaps:
    """`upload_routes`: paths, besides the specs' own, that take a spec's upload."""
    uploads = {spec.http_path: spec for spec in SPECS if spec.upload is not None}
    uploads |= upload_routes or {}
    by_path = {path: limits.upload_bytes(spec) + MULTIPART_SLACK for path, spec in uploads.items()}
    text_chars = max(longest_text(spec, limits) for spec in SPECS)
    return BodyCaps(JSON_BYTES_PER_CHAR * text_chars + JSON_SLACK, by_path)


def longest_text(spec: ModalitySpec[Any, Any], limits: ServerLimits) -> int:
    """Characters in the spec's longest bounded text field (a list of texts: all of them).
    A prompt's bound covers the whole conversation (see the text spec), so unbounded
    message contents add nothing."""
    schema = spec.request_model(limits.of(spec)).model_json_schema()
    return max((_chars(p) for p in schema["properties"].values()), default=0)


def _chars(schema: dict[str, Any]) -> int:
    longest = 0
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and option.get("format") != "binary":
            longest = max(longest, option.get("maxLength", 0))
        elif option.get("type") == "array" and isinstance(option.get("items"), dict):
            longest = max(longest, option.get("maxItems", 0) * _chars(option["items"]))
    return longest


def declared_length(scope: Scope) -> int | None:
    value = dict(scope["headers"]).get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the HTTP server refuses it before us


class BodyLimitMiddleware:
    """Counts the bytes of each request body against its route's cap."""

    def __init__(self, app: ASGIApp, caps: BodyCaps) -> None:
        self._app = app
        self._caps = caps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        cap = self._caps.for_path(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > cap:
            # Before a byte of it is read; the HTTP server drops what the client still sends.
            await refuse(scope, send, cap, close=False)
            return
        limited = _LimitedBody(scope, receive, send, cap)
        await self._app(scope, limited.receive, limited.send)


class _LimitedBody:
    def __init__(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._cap = cap
        self._read = 0
        self._started = False
        self._refused = False

    async def receive(self) -> Message:
        if self._refused:
            return DISCONNECT
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self._read += len(message.get("body", b""))
        if self._read <= self._cap:
            return message
        # Past the cap: answer now and tell the handler its client is gone, so it stops
        # reading; whatever it answers then is dropped.
        self._refused = True
        if not self._started:
            await refuse(self._scope, self._send, self._cap, close=True)
        return DISCONNECT

    async def send(self, message: Message) -> None:
        if self._refused:
            return
        if message["type"] == "http.response.start":
            self._started = True
        await self._send(message)


async def refuse(scope: Scope, send: Send, cap: int, close: bool) -> None:
    """A 413 in the route's error shape, with the request ID. `close`: the connection
    closes after it, for a chunked body, which could otherwise run on without end."""
    message = f"request body: larger than the limit of {cap} bytes for this route"
    body = error_body(scope["path"], 413, "INVALID_ARGUMENT", message)
    headers = {"Connection": "close"} if close else None
    response = JSONResponse(body, status_code=413, headers=headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return DISCONNECT

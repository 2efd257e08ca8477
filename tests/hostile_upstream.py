"""A loopback OpenAI-compatible server that misbehaves on purpose, for the hostile-upstream
tests. The edge forwards each caller's request ID upstream, so the test picks the
misbehaviour by the ID's first word: `flood-3f2a...` floods, `good-...` answers well.

Replies are close-delimited (HTTP/1.0), written as they are made: a 256 MiB line or a
200 MB image is generated piece by piece, never held here, and writing stops when the
edge hangs up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import soundfile
from PIL import Image

MiB = 1024 * 1024
FLOOD_DELTAS = 200_000
ENDLESS_LINE_BYTES = 256 * MiB
RANDOM_IMAGE_BYTES = 200 * MiB
BOMB_SIDE = 30_000
SPEECH_RATE = 16_000
GOOD_TEXT = ("Hello", " from", " upstream", ".")

Reply = Iterator[bytes]


def _sse(chunk: dict[str, Any] | str) -> bytes:
    data = chunk if isinstance(chunk, str) else json.dumps(chunk)
    return f"data: {data}\n\n".encode()


def _delta(content: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def _chat(usage: dict[str, Any] | None = None, deltas: tuple[Any, ...] = GOOD_TEXT) -> Reply:
    for content in deltas:
        yield _sse(_delta(content))
    yield _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    reported = {"prompt_tokens": 9, "completion_tokens": len(deltas)} if usage is None else usage
    yield _sse({"choices": [], "usage": reported})
    yield _sse("[DONE]")


def _flood() -> Reply:
    """Deltas far past the max_tokens asked: the edge must stop reading at its own cap."""
    piece = _sse(_delta("x")) * 1000
    for _ in range(FLOOD_DELTAS // 1000):
        yield piece
    yield _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    yield _sse("[DONE]")


def _endless_line() -> Reply:
    yield b"data: "
    block = b"a" * MiB
    for _ in range(ENDLESS_LINE_BYTES // MiB):
        yield block


def _bad_utf8() -> Reply:
    yield _sse(_delta("fine"))
    yield b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe broken"}}]}\n\n'
    yield from _chat()


def _surrogate() -> Reply:
    yield b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud800"}}]}\n\n'
    yield from _chat()


def _odd_shapes() -> Reply:
    yield _sse({"choices": 5})
    yield from _chat()


CHAT: dict[str, Callable[[], Reply]] = {
    "good": _chat,
    "flood": _flood,
    "endless": _endless_line,
    "negative": lambda: _chat({"prompt_tokens": -5, "completion_tokens": 4}),
    "huge": lambda: _chat({"prompt_tokens": 10**30, "completion_tokens": 10**30}),
    "words": lambda: _chat({"prompt_tokens": "many", "completion_tokens": [4]}),
    "badutf8": _bad_utf8,
    "surrogate": _surrogate,
    "shapes": _odd_shapes,
    "number": lambda: _chat(deltas=(5, "x")),
}


# -- images -----------------------------------------------------------------------------


def png_of(width: int, height: int) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(encoded, format="PNG")
    return encoded.getvalue()


@cache
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of side x side pixels, all black: ~110 KB that would decode to
    ~900 megapixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the bits
    compress = zlib.compressobj(9)
    rows_per_block = 1000
    idat = b"".join(compress.compress(row * rows_per_block) for _ in range(side // rows_per_block))
    idat += compress.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _image_json(data: bytes) -> Reply:
    yield json.dumps(
        {"created": 0, "data": [{"b64_json": base64.b64encode(data).decode()}]}
    ).encode()


def _random_image() -> Reply:
    """200 MB of random bytes as base64, made 3 MiB at a time."""
    yield b'{"created": 0, "data": [{"b64_json": "'
    for _ in range(RANDOM_IMAGE_BYTES // (3 * MiB)):
        yield base64.b64encode(os.urandom(3 * MiB))
    yield b'"}]}'


def _size(body: dict[str, Any]) -> tuple[int, int]:
    width, height = str(body.get("size", "64x64")).split("x")
    return int(width), int(height)


IMAGES: dict[str, Callable[[dict[str, Any]], Reply]] = {
    "good": lambda body: _image_json(png_of(*_size(body))),
    "text": lambda body: _image_json(b"this is not an image at all, only words " * 50),
    "random": lambda body: _random_image(),
    "bomb": lambda body: _image_json(bomb_png()),
    "wrongsize": lambda body: _image_json(png_of(96, 96)),
    "truncated": lambda body: _image_json(png_of(*_size(body))[:-40]),
}


# -- speech -----------------------------------------------------------------------------


def wav_of(seconds: float) -> bytes:
    encoded = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(int(seconds * SPEECH_RATE)) * 2 * np.pi * 440 / SPEECH_RATE)
    soundfile.write(encoded, tone.astype(np.float32), SPEECH_RATE, format="WAV", subtype="PCM_16")
    return encoded.getvalue()


def lying_wav() -> bytes:
    """A header that declares 10 s of sound in front of 1 s of it."""
    wav = bytearray(wav_of(1.0))
    data_at = wav.index(b"data") + 4
    wav[data_at : data_at + 4] = struct.pack("<I", 10 * SPEECH_RATE * 2)
    wav[4:8] = struct.pack("<I", 36 + 10 * SPEECH_RATE * 2)
    return bytes(wav)


SPEECH: dict[str, Callable[[], Reply]] = {
    "good": lambda: iter([wav_of(1.0)]),
    "lying": lambda: iter([lying_wav()]),
    "noise": lambda: iter([os.urandom(64 * 1024)]),
}


# -- embeddings -------------------------------------------------------------------------


def _embedding_json(vector: str, usage: str) -> Reply:
    yield (f'{{"data": [{{"index": 0, "embedding": {vector}}}], "usage": {usage}}}').encode()


EMBEDDINGS: dict[str, Callable[[], Reply]] = {
    "good": lambda: _embedding_json("[0.1, 0.2, 0.3]", '{"prompt_tokens": 3}'),
    "negative": lambda: _embedding_json("[0.1, 0.2, 0.3]", '{"prompt_tokens": -5}'),
    "number": lambda: _embedding_json("[0.1, 1" + "0" * 400 + "]", '{"prompt_tokens": 3}'),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a close-delimited body: written as it is made

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._reply("application/json", iter([b'{"object": "list", "data": []}']))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        case = (self.headers.get("x-request-id") or "good").split("-")[0]
        path = self.path.removeprefix("/v1")
        if path == "/chat/completions":
            self._reply("text/event-stream", CHAT.get(case, _chat)())
        elif path == "/images/generations":
            self._reply("application/json", IMAGES.get(case, IMAGES["good"])(body))
        elif path == "/audio/speech":
            self._reply("audio/wav", SPEECH.get(case, SPEECH["good"])())
        elif path == "/embeddings":
            self._reply("application/json", EMBEDDINGS.get(case, EMBEDDINGS["good"])())
        else:
            self.send_error(404)

    def _reply(self, content_type: str, pieces: Reply) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.end_headers()
        try:
            for piece in pieces:
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the edge hung up: what these tests want of it


class HostileUpstream:
    """The server on a free loopback port, in a daemon thread."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> HostileUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

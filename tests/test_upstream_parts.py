"""The upstream engines' small pure parts: Retry-After, what may be sent again, what the
first bytes of a file say."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

from genserve.server.errors import Unavailable
from genserve.server.upstream.http import _nothing_was_sent, retry_after_s
from genserve.server.upstream.media_stream import header_for
from genserve.server.upstream.sse import event_data


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5", "retry-after-ms": "250"}, 0.25),  # the exact one wins
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "1e400"}, None),  # inf
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "999999999"}, 86400.0),  # a day at most
        ({}, None),
    ],
)
def test_retry_after_is_a_finite_wait_or_none(headers: dict[str, str], expected: float) -> None:
    assert retry_after_s(httpx.Headers(headers)) == expected


def test_retry_after_may_be_an_http_date() -> None:
    wait = retry_after_s(httpx.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)}))
    assert wait is not None and 25 < wait <= 31


def test_only_requests_the_upstream_never_saw_are_sent_again() -> None:
    assert _nothing_was_sent(httpx.ConnectError("refused"))
    assert _nothing_was_sent(httpx.PoolTimeout("busy"))
    assert _nothing_was_sent(
        httpx.RemoteProtocolError("Server disconnected without sending a response.")
    )
    assert not _nothing_was_sent(httpx.ReadTimeout("slow"))
    assert not _nothing_was_sent(httpx.RemoteProtocolError("incomplete chunked read"))
    assert not _nothing_was_sent(httpx.WriteError("broken pipe"))


def _wav(seconds: float, rate: int = 16000) -> bytes:
    encoded = io.BytesIO()
    samples = np.zeros(int(seconds * rate), dtype=np.float32)
    soundfile.write(encoded, samples, rate, format="WAV", subtype="PCM_16")
    return encoded.getvalue()


def test_a_wav_header_gives_rate_and_duration_unless_its_size_is_unknown() -> None:
    wav = _wav(0.5)
    header = header_for(wav[:4096], "speech", "audio/wav")
    assert (header.mime_type, header.sample_rate, header.duration_s) == ("audio/wav", 16000, 0.5)
    # A WAV written while streaming declares 0xFFFFFFFF bytes of data: duration unknown.
    streamed = bytearray(wav)
    data_at = streamed.index(b"data") + 4
    streamed[data_at : data_at + 4] = b"\xff\xff\xff\xff"
    assert header_for(bytes(streamed[:4096]), "speech", None).duration_s == 0.0


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("WEBP", "image/webp")])
def test_an_image_header_gives_type_and_size(fmt: str, mime: str) -> None:
    encoded = io.BytesIO()
    Image.new("RGB", (96, 64)).save(encoded, format=fmt)
    header = header_for(encoded.getvalue()[:4096], "image", "application/octet-stream")
    assert (header.mime_type, header.width, header.height) == (mime, 96, 64)


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _events(*pieces: bytes, cap: int = 1024) -> list[str]:
    async def read() -> list[str]:
        return [data async for data in event_data(_pieces(*pieces), cap, "m")]

    return asyncio.run(read())


def test_sse_events_end_at_blank_lines_with_any_line_end_split_anywhere() -> None:
    stream = b": keep-alive\n\ndata: one\r\n\r\ndata:two\rdata: lines\r\revent: x\ndata: 3\n\n"
    expected = ["one", "two\nlines", "3"]
    assert _events(stream) == expected
    assert _events(*(stream[i : i + 1] for i in range(len(stream)))) == expected  # byte by byte
    assert _events(b"data: cut off at the end") == []  # an event never ended is not one


def test_an_sse_line_past_the_cap_fails_at_the_cap() -> None:
    with pytest.raises(Unavailable, match="more than 1024 bytes"):
        _events(b"data: ", *([b"a" * 100] * 11))
    with pytest.raises(Unavailable, match="more than 1024 bytes"):  # many short data lines
        _events(*([b"data: " + b"a" * 50 + b"\n"] * 30))
    with pytest.raises(Unavailable, match="not UTF-8"):
        _events(b"data: \xff\n\n")

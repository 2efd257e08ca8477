"""An upstream's file, as it arrives, turned into our typed media stream: the header
(what the first bytes say about the file), bounded chunks, and a final event whose
sha256 is the digest of exactly the chunks sent."""

from __future__ import annotations

import hashlib
import io
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from genserve.contract.events import Chunk, Final, Header, MediaEvent
from genserve.contract.modalities.image import ImageFormat
from genserve.server.errors import Unavailable

# Enough of a file's start to read its size (PNG, WebP, most JPEGs) or format (WAV), and
# little enough that speech starts flowing at once.
HEADER_PROBE_BYTES = 4096

SNIFFED_TYPES = (
    (b"\x89PNG", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"RIFF", "audio/wav", "wav"),  # WebP is RIFF too: told apart below
)


class FileCheck(Protocol):
    """Fed the file as it streams (media_checks.py); raises Unavailable where it fails."""

    def feed(self, piece: bytes) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class MediaTiming:
    seed: int
    started: float  # time.perf_counter() when the upstream call began


def header_for(head: bytes, stem: str, declared_type: str | None) -> Header:
    """What the start of the file tells: its type, and its size or sound format."""
    mime, extension = declared_type or "application/octet-stream", "bin"
    for magic, sniffed, ext in SNIFFED_TYPES:
        if head.startswith(magic):
            mime, extension = sniffed, ext
    if head[8:12] == b"WEBP":
        mime, extension = "image/webp", "webp"
    name = f"{stem}.{extension}"
    if mime.startswith("image/"):
        try:
            width, height = Image.open(io.BytesIO(head)).size
        except Exception:  # too little of it yet, or not an image after all
            width = height = 0
        return Header(mime_type=mime, file_name=name, width=width, height=height)
    if mime == "audio/wav":
        return _wav_header(head, name)
    return Header(mime_type=mime, file_name=name)


# A WAV written while streaming declares 0, 0x7FFFFFFF or 0xFFFFFFFF data bytes (not known
# yet); `wave` reports that as whole frames, so anything from 2 GiB less a frame is unknown.
STREAMED_WAV_BYTES = 0x7FFFFFFF


def _wav_header(head: bytes, name: str) -> Header:
    try:
        with wave.open(io.BytesIO(head)) as reader:
            rate, frames = reader.getframerate(), reader.getnframes()
            frame_bytes = reader.getsampwidth() * reader.getnchannels()
    except (wave.Error, EOFError):
        return Header(mime_type="audio/wav", file_name=name)
    size = frames * frame_bytes
    known = rate and 0 < size < STREAMED_WAV_BYTES - frame_bytes
    duration = frames / rate if known else 0.0
    return Header(mime_type="audio/wav", file_name=name, sample_rate=rate, duration_s=duration)


async def media_events(
    data: AsyncIterator[bytes],
    chunk_size: int,
    stem: str,
    declared_type: str | None,
    timing: MediaTiming,
    check: FileCheck | None = None,
) -> AsyncIterator[MediaEvent]:
    """Header first (from up to HEADER_PROBE_BYTES of the file), then chunks of at most
    chunk_size bytes as the bytes arrive, then the final event. `check` sees each piece
    before it goes on, and the whole before the final event."""
    digest = hashlib.sha256()
    pending = bytearray()
    sent = 0
    header_sent = False
    inference_ms = 0.0
    async for piece in data:
        if not inference_ms:  # the upstream's compute ends when its file starts
            inference_ms = (time.perf_counter() - timing.started) * 1000
        if check is not None:
            check.feed(piece)
        pending += piece
        if not header_sent and len(pending) < HEADER_PROBE_BYTES:
            continue
        if not header_sent:
            yield header_for(bytes(pending), stem, declared_type)
            header_sent = True
        while len(pending) >= chunk_size:
            chunk = bytes(pending[:chunk_size])
            del pending[:chunk_size]
            digest.update(chunk)
            yield Chunk(data=chunk, offset=sent)
            sent += len(chunk)
    if not header_sent:
        if not pending:  # a 200 with nothing in it is no answer
            raise Unavailable("the upstream answered with an empty file")
        yield header_for(bytes(pending), stem, declared_type)
    if check is not None:
        check.finish()
    for start in range(0, len(pending), chunk_size):
        chunk = bytes(pending[start : start + chunk_size])
        digest.update(chunk)
        yield Chunk(data=chunk, offset=sent)
        sent += len(chunk)
    now_ms = (time.perf_counter() - timing.started) * 1000
    yield Final(
        total_bytes=sent,
        sha256=digest.hexdigest(),
        queued_ms=0.0,
        inference_ms=inference_ms or now_ms,
        encoding_ms=now_ms - (inference_ms or now_ms),
        seed=timing.seed,
    )


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    """A file that came whole (base64 in JSON) as a stream of one piece."""
    yield data


def reencoded(data: bytes, image_format: ImageFormat) -> bytes:
    """An upstream image in the format the caller asked for."""
    encoded = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.convert("RGB").save(encoded, format=image_format.value.upper())
    return encoded.getvalue()

"""Tiny valid inputs made with the standard library: a PNG and a WAV.

They give each spec an example request that needs no file at hand (the contract tests
send every modality its example; the bridge shows them in its OpenAPI document).
"""

from __future__ import annotations

import io
import struct
import wave
import zlib
from functools import cache


@cache
def png(width: int = 64, height: int = 64, rgb: tuple[int, int, int] = (200, 90, 40)) -> bytes:
    """A solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@cache
def wav(seconds: float = 1.0, sample_rate: int = 16000) -> bytes:
    """Silence as a 16-bit mono WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(b"\x00\x00" * int(seconds * sample_rate))
    return buffer.getvalue()

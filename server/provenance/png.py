"""PNG: the record in an iTXt chunk right after IHDR, so it leaves before the model runs.

The head (signature, IHDR, iTXt) is known from the request's size alone: it is sent as
the first chunk, and once the image is made Pillow's encoding follows from its IDAT on
(its own signature and IHDR, checked to be the ones sent, are dropped).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from genserve.server.provenance.record import RECORD_KEY, Record

SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB_8 = (8, 2, 0, 0, 0)  # bit depth, colour type (truecolour), compression, filter, interlace


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, *RGB_8))


def itxt(keyword: str, text: str) -> bytes:
    """Uncompressed, no language tag: keyword NUL, flag 0, method 0, NUL, NUL, UTF-8 text."""
    return png_chunk(b"iTXt", keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


class StreamedPng:
    """An RGB PNG of a known size whose head goes out before its pixels exist."""

    def __init__(self, width: int, height: int, record: Record | None) -> None:
        self._ihdr = ihdr(width, height)
        self._record = record

    def head(self) -> bytes:
        record = b"" if self._record is None else itxt(RECORD_KEY, self._record.json)
        return SIGNATURE + self._ihdr + record

    def rest(self, image: Image.Image) -> bytes:
        """Pillow's PNG of the image from the chunk after its IHDR to IEND."""
        encoded = io.BytesIO()
        image.convert("RGB").save(encoded, format="PNG")
        data = encoded.getvalue()
        start = len(SIGNATURE) + len(self._ihdr)
        if data[:start] != SIGNATURE + self._ihdr:
            raise RuntimeError("the encoded PNG's IHDR is not the one already sent")
        return data[start:]

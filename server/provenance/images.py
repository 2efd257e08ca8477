"""An image file with its record: PNG streamed with its head first (png.py), JPEG and
WebP encoded whole with their XMP (xmp.py)."""

from __future__ import annotations

import io

from PIL import Image

from genserve.server.provenance.png import StreamedPng
from genserve.server.provenance.record import Record
from genserve.server.provenance.xmp import xmp_packet


class ImageFile:
    def __init__(self, pillow_format: str, width: int, height: int, record: Record | None):
        self._format = pillow_format
        self._record = record
        self._png = StreamedPng(width, height, record) if pillow_format == "PNG" else None

    def head(self) -> bytes:
        """What can be sent before the image exists (a PNG's head; nothing otherwise)."""
        return self._png.head() if self._png is not None else b""

    def rest(self, image: Image.Image) -> bytes:
        """The file after its head."""
        if self._png is not None:
            return self._png.rest(image)
        encoded = io.BytesIO()
        extra = {} if self._record is None else {"xmp": xmp_packet(self._record)}
        image.save(encoded, format=self._format, **extra)
        return encoded.getvalue()

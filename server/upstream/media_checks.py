"""What an upstream's file must be before we serve it as ours: the format and size that
were asked, within the modality's limits, and whole.

Each check is fed the file as it streams on to the caller, so nothing is held back for
it. The header is checked before any decoding (a decompression bomb is refused by its
declared size, never allocated); an image is then decoded as it arrives, and a WAV's data
is counted against its header. A file that fails ends the stream with UNAVAILABLE "the
upstream sent no valid <format>", never a truncated or lying OK.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import NoReturn

from PIL import Image, ImageFile

from genserve.server.errors import Unavailable
from genserve.server.upstream.media_stream import STREAMED_WAV_BYTES

MiB = 1024 * 1024
# How far into a file its header may be (a JPEG's size comes after its EXIF and ICC
# segments; a WAV's data chunk after any LIST chunks).
HEADER_SEARCH_BYTES = 256 * 1024
# The largest an encoded image of w x h pixels may be: 16-bit RGBA, stored uncompressed,
# plus room for metadata chunks.
IMAGE_BYTES_PER_PIXEL = 8
IMAGE_METADATA_BYTES = MiB


def image_bytes_limit(width: int, height: int) -> int:
    return IMAGE_BYTES_PER_PIXEL * width * height + IMAGE_METADATA_BYTES


def base64_limit(raw_bytes: int) -> int:
    """The JSON reply that carries `raw_bytes` as base64, with room for its other fields."""
    return raw_bytes * 4 // 3 + 64 * 1024


class ImageCheck:
    """An upstream image: the format and size asked, at most `max_pixels`, decodable."""

    def __init__(
        self, model: str, image_format: str, width: int, height: int, max_pixels: int
    ) -> None:
        self._model = model
        self._format = image_format.upper()  # Pillow's name: PNG, JPEG, WEBP
        self._size = (width, height)
        self._max_pixels = max_pixels
        self._max_bytes = image_bytes_limit(width, height)
        self._head = bytearray()
        self._parser: ImageFile.Parser | None = None
        self._received = 0

    def feed(self, piece: bytes) -> None:
        self._received += len(piece)
        if self._received > self._max_bytes:
            self._fail(f"it passed {self._max_bytes} bytes, the most a {self._asked} image takes")
        if self._parser is None:
            self._head += piece
            if not self._header_checked(final=False):
                return
            piece, self._head = bytes(self._head), bytearray()
        self._decode(piece)

    def finish(self) -> None:
        if self._parser is None:
            self._header_checked(final=True)
            self._decode(bytes(self._head))
        assert self._parser is not None
        try:
            self._parser.close().close()
        except Exception as error:
            self._fail(f"it does not decode: truncated or corrupt ({type(error).__name__})")

    def _decode(self, piece: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.feed(piece)
        except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError...
            self._fail(f"it does not decode ({type(error).__name__})")

    @property
    def _asked(self) -> str:
        return f"{self._size[0]}x{self._size[1]}"

    def _header_checked(self, final: bool) -> bool:
        """True once the header is read and passes; False while more bytes may show it."""
        try:
            with Image.open(BytesIO(self._head)) as image:
                found, size = image.format, image.size
        except Image.DecompressionBombError:
            self._fail("it declares more pixels than Pillow will open")
        except Exception:  # not an image, or not enough of it yet
            if final or len(self._head) >= HEADER_SEARCH_BYTES:
                self._fail("no image header was found in it")
            return False
        if size[0] * size[1] > self._max_pixels:
            self._fail(
                f"it declares {size[0]}x{size[1]} pixels, over the limit of {self._max_pixels}"
            )
        if found != self._format:
            self._fail(f"it is {found or 'an unknown format'}")
        if size != self._size:
            self._fail(f"it is {size[0]}x{size[1]}; {self._asked} was asked")
        self._parser = ImageFile.Parser()
        return True

    def _fail(self, why: str) -> NoReturn:
        raise Unavailable(f"model {self._model}: the upstream sent no valid {self._format}: {why}")


# -- WAV --------------------------------------------------------------------------------

WAV_FORMATS = (1, 3, 0xFFFE)  # PCM, IEEE float, extensible
WAV_BITS = (8, 16, 24, 32, 64)
WAV_RATES = (1000, 768_000)
MAX_CHANNELS = 16


@dataclass(frozen=True)
class WavLayout:
    data_at: int  # where the samples start
    declared_bytes: int | None  # None: written while streaming, length unknown
    frame_bytes: int
    byte_rate: int


class WavCheck:
    """An upstream WAV: a sane header, at most `max_seconds` of sound, and as many data
    bytes as the header declares (a header that lies about the length is caught)."""

    def __init__(self, model: str, max_seconds: float) -> None:
        self._model = model
        self._max_seconds = max_seconds
        self._head = bytearray()
        self._layout: WavLayout | None = None
        self._data_bytes = 0

    def feed(self, piece: bytes) -> None:
        if self._layout is None:
            self._head += piece
            self._layout = self._parse(final=False)
            if self._layout is None:
                return
            self._data_bytes = len(self._head) - self._layout.data_at
            self._head = bytearray()
        else:
            self._data_bytes += len(piece)
        limit = int(self._max_seconds * self._layout.byte_rate)
        if self._data_bytes > limit:
            self._fail(f"it holds more than the limit of {self._max_seconds:g} s of sound")

    def finish(self) -> None:
        if self._layout is None:
            self._layout = self._parse(final=True)
            assert self._layout is not None
            self._data_bytes = len(self._head) - self._layout.data_at
        layout = self._layout
        sound = self._data_bytes
        if layout.declared_bytes is not None:
            if sound < layout.declared_bytes:
                self._fail(
                    f"its header declares {layout.declared_bytes} bytes of sound, it sent {sound}"
                )
            sound = layout.declared_bytes  # chunks after the data (LIST, ...) are allowed
        if sound % layout.frame_bytes:
            self._fail(f"its {sound} bytes of sound are not whole frames of {layout.frame_bytes}")

    def _parse(self, final: bool) -> WavLayout | None:
        head = bytes(self._head)
        if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
            self._fail("it is not RIFF WAVE")
        at, fmt = 12, None
        while at + 8 <= len(head):
            chunk_id, size = head[at : at + 4], struct.unpack_from("<I", head, at + 4)[0]
            if chunk_id == b"data":
                if fmt is None:
                    self._fail("its data comes before its format")
                return self._layout_of(fmt, at + 8, size)
            if chunk_id == b"fmt ":
                if at + 8 + 16 > len(head):
                    break  # the format chunk is not all here yet
                fmt = head[at + 8 : at + 8 + 16]
            at += 8 + size + (size & 1)  # chunks are padded to even sizes
        if final or len(head) >= HEADER_SEARCH_BYTES:
            self._fail("no data chunk was found in its first bytes")
        return None

    def _layout_of(self, fmt: bytes, data_at: int, size: int) -> WavLayout:
        tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", fmt)
        if tag not in WAV_FORMATS:
            self._fail(f"its sample format {tag:#x} is not PCM or float")
        if not 1 <= channels <= MAX_CHANNELS:
            self._fail(f"it declares {channels} channels")
        if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
            self._fail(f"it declares a sample rate of {rate} Hz")
        if bits not in WAV_BITS or align != channels * bits // 8 or byte_rate != rate * align:
            self._fail(f"its frame layout is inconsistent ({bits} bits, {align}, {byte_rate})")
        # A WAV written while streaming declares a placeholder size (as header_for reads it).
        streamed = size == 0 or size >= STREAMED_WAV_BYTES - align
        return WavLayout(
            data_at=data_at,
            declared_bytes=None if streamed else size,
            frame_bytes=align,
            byte_rate=byte_rate,
        )

    def _fail(self, why: str) -> NoReturn:
        raise Unavailable(f"model {self._model}: the upstream sent no valid WAV: {why}")

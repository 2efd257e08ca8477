"""Collects a media stream from the generated stubs into its parts."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image

from genserve.v1 import common_pb2

TEST_CHUNK_SIZE = 4 * 1024  # the test server's chunks: small, so files span several


@dataclass
class MediaResult:
    kinds: list[str] = field(default_factory=list)
    header: common_pb2.MediaHeader | None = None
    progress: list[common_pb2.Progress] = field(default_factory=list)
    chunks: list[common_pb2.DataChunk] = field(default_factory=list)
    final: common_pb2.MediaFinal | None = None

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def collect(stream: Iterable[common_pb2.MediaEvent]) -> MediaResult:
    result = MediaResult()
    for event in stream:
        kind = event.WhichOneof("event")
        assert kind is not None
        result.kinds.append(kind)
        if kind == "header":
            result.header = event.header
        elif kind == "progress":
            result.progress.append(event.progress)
        elif kind == "chunk":
            result.chunks.append(event.chunk)
        else:
            result.final = event.final
    return result


def png_bytes(
    width: int = 64, height: int = 64, colour: tuple[int, int, int] = (200, 90, 40)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()

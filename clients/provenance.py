"""Reads the generation record back from any file genserve makes, with no server.

    from genserve.client.provenance import read_provenance
    found = read_provenance(Path("room.png").read_bytes())
    found.format, found.record["model"], found.record["seed"]

Each format is parsed where genserve writes it: a PNG's iTXt chunk (keyword `genserve`),
the XMP of a JPEG (APP1) or a WebP (its `XMP ` chunk), an MP4's `©cmt` metadata atom
(moov/udta/meta/ilst), a WAV's LIST/INFO `ICMT`, an OBJ's `# genserve` comment, a PLY's
`comment genserve` header line: in every format, before the pixels, samples or rows.

When c2pa-python is importable, the file's C2PA content credentials are validated too
(`found.c2pa.state`: Valid, Trusted, Invalid, or None without a manifest); pass the
signing CA's PEM as `trust_anchors` for a chain that is not publicly trusted.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

RECORD_KEY = "genserve"
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_RECORD = re.compile(rb"<genserve:record>(.*?)</genserve:record>", re.DOTALL)


C2PA_MIMES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "wav": "audio/wav",
    "mp4": "video/mp4",
}


@dataclass(frozen=True)
class C2paValidation:
    """A file's C2PA validation: its state and the failure codes of its active manifest."""

    state: str | None  # Valid, Trusted, Invalid; None: no C2PA manifest in the file
    failures: tuple[str, ...] = ()
    error: str | None = None  # the manifest could not be read


@dataclass(frozen=True)
class Provenance:
    format: str  # png, jpeg, webp, mp4, wav, obj, ply, or unknown
    record: dict[str, Any] | None  # None: the file carries no genserve record
    c2pa: C2paValidation | None = None  # None: c2pa-python is not installed, or no format


def read_provenance(data: bytes, trust_anchors: str | None = None) -> Provenance:
    """The file's format, its generation record (None when it has none) and, with
    c2pa-python installed, its C2PA validation."""
    kind = sniff(data)
    reader = READERS.get(kind)
    text = reader(data) if reader is not None else None
    record = json.loads(text) if text is not None else None
    return Provenance(kind, record, read_c2pa(data, kind, trust_anchors))


def read_provenance_file(path: Path | str, trust_anchors: str | None = None) -> Provenance:
    return read_provenance(Path(path).read_bytes(), trust_anchors)


def read_c2pa(data: bytes, kind: str, trust_anchors: str | None = None) -> C2paValidation | None:
    """The C2PA validation of a file of a signable format; None without c2pa-python."""
    mime = C2PA_MIMES.get(kind)
    if mime is None:
        return None
    try:
        import c2pa
    except ImportError:
        return None
    context = None
    if trust_anchors:
        trust = {"verify": {"verify_trust": True}, "trust": {"trust_anchors": trust_anchors}}
        context = c2pa.Context(settings=c2pa.Settings.from_dict(trust))
    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
    except c2pa.C2paError.ManifestNotFound:
        return C2paValidation(None)
    except c2pa.C2paError as error:
        return C2paValidation("Invalid", error=str(error))
    failures = (results.get("activeManifest") or {}).get("failure") or []
    return C2paValidation(state, tuple(str(item.get("code")) for item in failures))


def sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"ply\n") or data.startswith(b"ply\r\n"):
        return "ply"
    if data.startswith(b"# ") or data.startswith(b"v "):
        return "obj"
    return "unknown"


def _png(data: bytes) -> str | None:
    at = 8
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        body = data[at + 8 : at + 8 + size]
        if kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            if keyword == RECORD_KEY.encode():
                # flag, method, language NUL, translated keyword NUL, text
                _, _, rest = rest[2:].partition(b"\0")
                _, _, text = rest.partition(b"\0")
                return text.decode("utf-8")
        if kind in (b"IDAT", b"IEND"):
            return None
        at += 12 + size
    return None


def _xmp_record(packet: bytes) -> str | None:
    found = _XMP_RECORD.search(packet)
    return unescape(found.group(1).decode("utf-8")) if found else None


def _jpeg(data: bytes) -> str | None:
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more metadata
            return None
        size = struct.unpack_from(">H", data, at + 2)[0]
        segment = data[at + 4 : at + 2 + size]
        if marker == 0xE1 and segment.startswith(XMP_APP1):
            return _xmp_record(segment[len(XMP_APP1) :])
        at += 2 + size
    return None


def _riff_chunks(
    data: bytes, start: int = 12, end: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        kind, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        yield kind, data[at + 8 : min(at + 8 + size, end)]
        if kind == b"data":  # a streamed WAV's data runs to the end
            return
        at += 8 + size + (size & 1)


def _webp(data: bytes) -> str | None:
    for kind, body in _riff_chunks(data):
        if kind == b"XMP ":
            return _xmp_record(body)
    return None


def _wav(data: bytes) -> str | None:
    for kind, body in _riff_chunks(data):
        if kind == b"LIST" and body[:4] == b"INFO":
            for item, text in _riff_chunks(body, start=4):
                if item == b"ICMT":
                    return text.rstrip(b"\0").decode("ascii")
    return None


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        yield kind, at + header, at + size
        at += size


def _mp4(data: bytes) -> str | None:
    path = [b"moov", b"udta", b"meta", b"ilst", b"\xa9cmt", b"data"]
    start, end = 0, len(data)
    for depth, name in enumerate(path):
        for kind, body, box_end in _boxes(data, start, end):
            if kind == name:
                start, end = body, box_end
                if name == b"meta":
                    start += 4  # a full box: version and flags
                break
            if depth == 0 and kind == b"moof":
                return None
        else:
            return None
    return data[start + 8 : end].decode("utf-8")  # the data box: type and locale first


def _obj(data: bytes) -> str | None:
    for line in data.split(b"\n", 64)[:64]:
        if line.startswith(f"# {RECORD_KEY} ".encode()):
            return line[len(RECORD_KEY) + 3 :].decode("ascii").strip()
        if line and not line.startswith(b"#"):
            return None
    return None


def _ply(data: bytes) -> str | None:
    head = data[: data.find(b"end_header")] if b"end_header" in data else data[:65536]
    prefix = f"comment {RECORD_KEY} ".encode()
    for line in head.split(b"\n"):
        if line.startswith(prefix):
            return line[len(prefix) :].decode("ascii").strip()
    return None


READERS: dict[str, Callable[[bytes], str | None]] = {
    "png": _png,
    "jpeg": _jpeg,
    "webp": _webp,
    "wav": _wav,
    "mp4": _mp4,
    "obj": _obj,
    "ply": _ply,
}

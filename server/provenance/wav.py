"""WAV: the record in a LIST/INFO chunk before the data chunk (ISFT: the software, ICMT:
the record's JSON), so a streamed WAV sends it in its first bytes."""

from __future__ import annotations

import struct

from genserve.server.provenance.record import Record


def _info_item(kind: bytes, text: str) -> bytes:
    data = text.encode("ascii") + b"\0"  # INFO strings end with a NUL
    pad = b"\0" if len(data) % 2 else b""
    return kind + struct.pack("<I", len(data)) + data + pad


def info_chunk(record: Record | None) -> bytes:
    """The LIST chunk; empty when there is no record."""
    if record is None:
        return b""
    body = b"INFO" + _info_item(b"ISFT", record.software) + _info_item(b"ICMT", record.json)
    return b"LIST" + struct.pack("<I", len(body)) + body


def with_info(wav: bytes, record: Record | None) -> bytes:
    """A whole WAV with the LIST chunk put before its data chunk, the RIFF size grown."""
    chunk = info_chunk(record)
    if not chunk:
        return wav
    at = 12
    while at + 8 <= len(wav):
        kind, size = wav[at : at + 4], struct.unpack_from("<I", wav, at + 4)[0]
        if kind == b"data":
            riff_size = struct.unpack_from("<I", wav, 4)[0] + len(chunk)
            return wav[:4] + struct.pack("<I", riff_size) + wav[8:at] + chunk + wav[at:]
        at += 8 + size + (size & 1)
    raise ValueError("no data chunk in the WAV")

"""OBJ and PLY: the record in a header comment (`# genserve {...}` first in an OBJ;
`comment genserve {...}` after a PLY's format line), in the file's first bytes."""

from __future__ import annotations

from genserve.server.provenance.record import RECORD_KEY, Record


def obj_comment(record: Record | None) -> bytes:
    return b"" if record is None else f"# {RECORD_KEY} {record.json}\n".encode("ascii")


def ply_with_comment(head: bytes, record: Record | None) -> bytes:
    """A PLY's first bytes with the comment line put after its `format` line."""
    if record is None:
        return head
    at = head.find(b"\nformat ")
    end = head.find(b"\n", at + 1) if at >= 0 else -1
    if end < 0:
        raise ValueError("no PLY format line in the file's first bytes")
    line = f"comment {RECORD_KEY} {record.json}\n".encode("ascii")
    return head[: end + 1] + line + head[end + 1 :]

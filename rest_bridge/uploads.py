"""An uploaded file, read no further than the server would take it."""

from __future__ import annotations

from fastapi import UploadFile

from genserve.bridge.errors import BridgeError


async def read_upload(file: UploadFile, field: str, max_bytes: int) -> bytes:
    """The file's bytes; 422 naming the field and the limit when it is larger. (The body
    limit refuses a far larger request before it is read: see body_limit.py.)"""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        message = f"{field}: larger than the limit of {max_bytes} bytes"
        raise BridgeError(422, "INVALID_ARGUMENT", message, param=field)
    return data

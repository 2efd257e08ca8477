"""MP4: the record as container metadata, written through PyAV. FFmpeg's mp4 muxer puts
it in moov/udta/meta/ilst (the `©cmt` comment atom); with `empty_moov` the moov is the
fragmented file's init segment, sent before the first frame is encoded."""

from __future__ import annotations

from typing import Any

from genserve.server.provenance.record import Record

COMMENT_TAG = "comment"


def set_mp4_metadata(container: Any, record: Record | None) -> None:
    """On a container opened for writing, before its header is written."""
    if record is not None:
        container.metadata[COMMENT_TAG] = record.json

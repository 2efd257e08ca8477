"""Server-sent events from an upstream, read under a size cap.

httpx-sse reads each line whole, however long: an upstream that never ends a line grows
our memory until it stops. Here a line, or an event's data, that passes `max_event_bytes`
ends the stream at the cap, so memory stays within the cap plus one network read. Lines
end with CRLF, LF or CR, as the SSE format allows; only `data` fields matter to us (the
OpenAI stream sends nothing else), and comments (keep-alives) are skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from genserve.server.errors import Unavailable


def _line_end(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """(where the next line ends, where the one after starts), or None if not yet known
    (no line end, or a CR that may be the first half of a CRLF still to come)."""
    positions = [p for p in (buffer.find(b"\r", start), buffer.find(b"\n", start)) if p >= 0]
    if not positions:
        return None
    end = min(positions)
    if buffer[end] == ord("\n"):
        return end, end + 1
    if end + 1 == len(buffer):
        return None  # a CR at the very end: wait for the byte after it
    return end, end + (2 if buffer[end + 1] == ord("\n") else 1)


async def event_data(
    chunks: AsyncIterator[bytes], max_event_bytes: int, model: str
) -> AsyncIterator[str]:
    """The data of each event (its data lines joined by newlines), as UTF-8 text."""
    buffer = bytearray()
    data: list[bytes] = []
    data_bytes = 0
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while (ends := _line_end(buffer, start)) is not None:
            line = bytes(buffer[start : ends[0]])
            start = ends[1]
            if not line:  # a blank line dispatches the event
                if data:
                    yield _text(b"\n".join(data), model)
                data, data_bytes = [], 0
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                value = value.removeprefix(b" ")
                data.append(value)
                data_bytes += len(value) + 1
        del buffer[:start]
        if len(buffer) + data_bytes > max_event_bytes:
            raise Unavailable(
                f"model {model}: the upstream sent an event of more than {max_event_bytes} "
                "bytes (the upstream's max_event_bytes); the output is incomplete"
            )


def _text(data: bytes, model: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unavailable(f"model {model}: the upstream sent an event that is not UTF-8") from None

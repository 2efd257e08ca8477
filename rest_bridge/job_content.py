"""A job's artifact over HTTP, through JobService.Download: the whole file, or one byte
range (RFC 9110: `Range: bytes=a-b`, `a-`, `-n`), so that a `<video>` can seek and a cut
download resume (`curl -C -`). The Range and If-Range headers are parsed by Werkzeug.

- A finished job: 200 with Content-Length, or 206 with Content-Range; a range past the
  end, 416 with `Content-Range: bytes */size`. ETag: the artifact's sha256, quoted;
  Last-Modified: when the job finished. A Range whose If-Range does not match (or that
  asks for several ranges) is ignored: the whole file, 200.
- A job still queued or running: a plain GET streams the file as it is written (chunked,
  no length); a Range is 409, the size being unknown.
- A failed or cancelled job: 409; an expired one: 410.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from werkzeug.http import http_date, parse_if_range_header, parse_range_header

from genserve.bridge.errors import BridgeError, error_response
from genserve.bridge.job_calls import UNFINISHED, JobCalls, state_of
from genserve.bridge.streams import media_file_response, safe_file_name
from genserve.contract import spec_for
from genserve.v1 import jobs_pb2

BINARY = "application/octet-stream"


@dataclass(frozen=True)
class Span:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start


class Unsatisfiable(Exception):
    pass


def requested_span(header: str | None, size: int) -> Span | None:
    """The one byte range asked for within `size` bytes; None: the whole file (no Range,
    a malformed one, or several ranges, which RFC 9110 lets a server ignore)."""
    parsed = parse_range_header(header) if header else None
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    start, stop = parsed.ranges[0]
    if stop is None:
        stop = size
        if start < 0:  # a suffix: the last -start bytes, all of them if it is longer
            start = max(size + start, 0)
    if start >= size:
        raise Unsatisfiable
    return Span(start, min(stop, size))


def if_range_holds(header: str | None, etag: str, last_modified: datetime) -> bool:
    """No If-Range, or one naming this ETag (strongly) or this Last-Modified date."""
    if not header:
        return True
    condition = parse_if_range_header(header)
    if condition.etag is not None:
        return f'"{condition.etag}"' == etag and not header.startswith("W/")
    return condition.date is not None and condition.date == last_modified


def _last_modified(job: jobs_pb2.Job) -> datetime:
    return datetime.fromtimestamp(int(job.finished_at), UTC)


def _headers(job: jobs_pb2.Job) -> dict[str, str]:
    disposition = "attachment" if spec_for(job.modality).attachment else "inline"
    name = safe_file_name(job.header.file_name, f"{job.id}")
    return {
        "Accept-Ranges": "bytes",
        "ETag": f'"{job.final.sha256}"',
        "Last-Modified": http_date(_last_modified(job)),
        "Content-Disposition": f'{disposition}; filename="{name}"',
    }


async def content_response(request: Request, calls: JobCalls, job: jobs_pb2.Job) -> Response:
    state = state_of(job)
    ranged = request.headers.get("range")
    if state in UNFINISHED:
        if ranged:
            raise BridgeError(
                409,
                "FAILED_PRECONDITION",
                f"job {job.id} is {state}: a byte range needs the finished file; "
                "a GET without Range follows the file as it is written",
            )
        return await media_file_response(calls.watch(job.id), spec_for(job.modality).attachment)
    if state == "expired":
        raise BridgeError(410, "FAILED_PRECONDITION", f"job {job.id} expired: its file is gone")
    if state != "succeeded":
        reason = f": {job.error.message}" if job.HasField("error") else ""
        raise BridgeError(409, "FAILED_PRECONDITION", f"job {job.id} {state}{reason}")
    return await _finished(request, calls, job)


async def _finished(request: Request, calls: JobCalls, job: jobs_pb2.Job) -> Response:
    size = job.final.total_bytes
    headers = _headers(job)
    span = None
    if if_range_holds(request.headers.get("if-range"), headers["ETag"], _last_modified(job)):
        try:
            span = requested_span(request.headers.get("range"), size)
        except Unsatisfiable:
            return _unsatisfiable(request, size, headers)
    status = 200
    if span is None:
        span = Span(0, size)
    else:
        status = 206
        headers["Content-Range"] = f"bytes {span.start}-{span.stop - 1}/{size}"
    headers["Content-Length"] = str(span.length)
    mime = job.header.mime_type or BINARY
    if span.length == 0:  # an empty file: nothing to download
        return Response(b"", status_code=status, media_type=mime, headers=headers)
    call = calls.download(job.id, span.start, span.length)
    first = await _first_chunk(call)
    return StreamingResponse(_chunks(call, first), status, headers, media_type=mime)


def _unsatisfiable(request: Request, size: int, headers: dict[str, str]) -> JSONResponse:
    message = f"range: outside the file's {size} bytes"
    return error_response(
        request,
        416,
        "OUT_OF_RANGE",
        message,
        headers={**headers, "Content-Range": f"bytes */{size}"},
    )


async def _first_chunk(call: grpc.aio.UnaryStreamCall) -> object:
    """Read before the response starts, so that an error is still an HTTP status."""
    try:
        return await call.read()
    except BaseException:
        call.cancel()
        raise


async def _chunks(call: grpc.aio.UnaryStreamCall, first: object) -> AsyncIterator[bytes]:
    try:
        chunk = first
        while chunk is not grpc.aio.EOF:
            yield chunk.data  # type: ignore[attr-defined]
            chunk = await call.read()
    finally:
        call.cancel()  # a no-op after the end; stops the server when the client left

"""Timing of every RPC, handed to sinks (the access log, the usage log) when it ends.

Measures time to first message, total time, messages and bytes sent, and the final
status, including for failed and cancelled calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc.aio import AbortError, ServicerContext

from genserve.server.interceptors.base import CallInterceptor, Responses
from genserve.server.request_context import CallDetails, call_details_var, current_request_id

logger = logging.getLogger("genserve.access")

# Probes and reflection are frequent and dull: logged at DEBUG, still in the usage log.
QUIET_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# The caller's own timer fires first and cancels the call a few milliseconds before the
# server's copy of the deadline: a cancel that close to the deadline is the deadline.
DEADLINE_SLACK_S = 0.25


@dataclass(frozen=True)
class CallRecord:
    request_id: str
    started_at: datetime
    method: str
    peer: str
    status_code: grpc.StatusCode
    response_time_ms: float
    time_to_first_message_ms: float | None
    messages_out: int
    bytes_out: int
    details: CallDetails
    status_detail: str = ""  # the status message of a failed call: why it failed

    @property
    def successful(self) -> bool:
        return self.status_code is grpc.StatusCode.OK


CallSink = Callable[[CallRecord], None]


def log_access(record: CallRecord) -> None:
    quiet = record.method.startswith(QUIET_SERVICES)
    ttfm = (
        f"{record.time_to_first_message_ms:.1f}"
        if record.time_to_first_message_ms is not None
        else "-"
    )
    logger.log(
        logging.DEBUG if quiet else logging.INFO,
        "%s %s total_ms=%.1f ttfm_ms=%s messages=%d bytes=%d peer=%s key=%s",
        record.method,
        record.status_code.name,
        record.response_time_ms,
        ttfm,
        record.messages_out,
        record.bytes_out,
        record.peer,
        record.details.key_id or "-",
        extra={
            "method": record.method,
            "code": record.status_code.name,
            "total_ms": round(record.response_time_ms, 3),
            "ttfm_ms": record.time_to_first_message_ms,
            "messages": record.messages_out,
            "bytes": record.bytes_out,
            "peer": record.peer,
            "key": record.details.key_id,
        },
    )


class TelemetryInterceptor(CallInterceptor):
    def __init__(
        self,
        sinks: Sequence[CallSink],
        in_flight: Callable[[], AbstractContextManager[Any]] = nullcontext,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sinks = tuple(sinks)
        self._in_flight = in_flight  # entered for the whole call (a gauge, say)
        self._stopping = stopping  # the server is shutting down: cancels are UNAVAILABLE
        self._active = 0
        self._all_recorded = asyncio.Event()
        self._all_recorded.set()

    async def wait_recorded(self, timeout: float) -> bool:
        """Wait until every call that started has been handed to the sinks (at shutdown,
        before the usage log closes); False on timeout."""
        try:
            await asyncio.wait_for(self._all_recorded.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def around(
        self,
        details: grpc.HandlerCallDetails,
        context: ServicerContext[Any, Any],
        responses: Responses,
    ) -> AsyncIterator[Any]:
        started_at = datetime.now(UTC)
        start = time.perf_counter()
        # Read the peer now: grpc_call_get_peer after a cancel reads freed transport
        # memory and can crash the process (grpc/grpc#29927).
        peer = context.peer()
        remaining = context.time_remaining()
        call_details = CallDetails(
            deadline=None if remaining is None else time.monotonic() + remaining
        )
        call_details_var.set(call_details)
        first_message_ms: float | None = None
        messages = 0
        size = 0
        code = grpc.StatusCode.UNKNOWN
        in_flight = self._in_flight()
        in_flight.__enter__()
        self._active += 1
        self._all_recorded.clear()
        try:
            async for response in responses():
                if first_message_ms is None:
                    first_message_ms = (time.perf_counter() - start) * 1000
                messages += 1
                size += response.ByteSize() if hasattr(response, "ByteSize") else 0
                yield response
            code = _code_of(context) or grpc.StatusCode.OK
        except AbortError:
            code = _code_of(context) or grpc.StatusCode.UNKNOWN
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: grpc closed the response stream (a cancel seen between
            # messages), which left the code UNKNOWN before.
            # Cancelled by our own shutdown, the caller sees UNAVAILABLE: record that.
            code = grpc.StatusCode.UNAVAILABLE if self._stopping() else _cancel_code(context)
            raise
        finally:
            in_flight.__exit__(None, None, None)
            record = CallRecord(
                request_id=current_request_id(),
                started_at=started_at,
                method=details.method,
                peer=peer,
                status_code=code,
                response_time_ms=(time.perf_counter() - start) * 1000,
                time_to_first_message_ms=first_message_ms,
                messages_out=messages,
                bytes_out=size,
                details=call_details,
                status_detail="" if code is grpc.StatusCode.OK else _details_of(context),
            )
            for sink in self._sinks:
                try:
                    sink(record)
                except Exception:  # telemetry must never fail the call
                    logger.exception("call sink %r failed", sink)
            self._active -= 1
            if self._active == 0:
                self._all_recorded.set()


def _code_of(context: ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    code = context.code()
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    # grpc.aio may report the raw integer status.
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def _details_of(context: ServicerContext[Any, Any]) -> str:
    try:
        details = context.details()
    except Exception:  # an older grpc.aio context without it: the code still says much
        return ""
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details or ""


def _cancel_code(context: ServicerContext[Any, Any]) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED

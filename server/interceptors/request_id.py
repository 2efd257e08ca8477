"""Request IDs: taken from `x-request-id` metadata or generated, echoed back, put in context."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc.aio import ServicerContext

from genserve.server.interceptors.base import CallInterceptor, Responses, metadata_value
from genserve.server.request_context import REQUEST_ID_METADATA_KEY, new_request_id, request_id_var

# A caller's ID goes into logs and headers: accept only a sane token, else make our own.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def accept_request_id(candidate: str | None) -> str:
    if candidate and _VALID_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


class RequestIdInterceptor(CallInterceptor):
    async def around(
        self,
        details: grpc.HandlerCallDetails,
        context: ServicerContext[Any, Any],
        responses: Responses,
    ) -> AsyncIterator[Any]:
        request_id = accept_request_id(metadata_value(details, REQUEST_ID_METADATA_KEY))
        # Each RPC runs in its own task, so the value never leaks into another call.
        request_id_var.set(request_id)
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, request_id),))
        async for response in responses():
            yield response

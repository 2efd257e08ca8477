"""Maps exceptions to gRPC statuses, over the whole stream.

ServingError subclasses carry their code and a client-safe message. Anything else is
a bug: the traceback goes to the log and the caller gets INTERNAL with the request ID.

The status is set, not raised with `context.abort()`: abort sends it at once, before
the outer interceptors have run, so a caller could see the error before its usage row
exists. Set this way, grpc sends it when the whole chain has finished.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AbortError, ServicerContext

from genserve.server.errors import (
    RETRY_AFTER_METADATA_KEY,
    RETRY_AFTER_MS_METADATA_KEY,
    ServingError,
)
from genserve.server.interceptors.base import CallInterceptor, Responses
from genserve.server.request_context import current_request_id

logger = logging.getLogger(__name__)


class ErrorInterceptor(CallInterceptor):
    async def handler_for(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """An unknown method gets a handler too (the innermost interceptor makes it), so
        the outer ones log it and give it its usage row like any other call."""
        handler = await continuation(details)
        return handler if handler is not None else _unimplemented(details.method)

    async def around(
        self,
        details: grpc.HandlerCallDetails,
        context: ServicerContext[Any, Any],
        responses: Responses,
    ) -> AsyncIterator[Any]:
        try:
            async for response in responses():
                yield response
        except (AbortError, asyncio.CancelledError):
            raise
        except ServingError as exc:
            logger.info("%s rejected: %s %s", details.method, exc.grpc_code.name, exc)
            if exc.retry_after_s is not None:  # the bridge turns it into Retry-After
                seconds = str(max(1, math.ceil(exc.retry_after_s)))
                millis = str(max(1, math.ceil(exc.retry_after_s * 1000)))
                context.set_trailing_metadata(
                    ((RETRY_AFTER_METADATA_KEY, seconds), (RETRY_AFTER_MS_METADATA_KEY, millis))
                )
            _fail(context, exc.grpc_code, str(exc))
        except Exception:
            logger.exception("unhandled error in %s", details.method)
            _fail(
                context,
                grpc.StatusCode.INTERNAL,
                f"internal error; request_id={current_request_id()}",
            )


def _unimplemented(method: str) -> grpc.RpcMethodHandler:
    # No (de)serializers: any request shape arrives as raw bytes and is ignored.
    async def answer(requests: Any, context: ServicerContext[Any, Any]) -> None:
        _fail(context, grpc.StatusCode.UNIMPLEMENTED, f"{method} is not a method of this server")

    return grpc.stream_stream_rpc_method_handler(answer)


def _fail(context: ServicerContext[Any, Any], code: grpc.StatusCode, message: str) -> None:
    context.set_code(code)
    context.set_details(message)

"""An interceptor base that sees the whole call, streaming responses included.

grpc.aio hands an interceptor the method handler, not the call. Wrapping only the
handler's creation misses everything a streaming RPC does after its first message
(errors, timing, cancellation). Here every handler kind becomes one shape, an async
iterator of responses, which a subclass wraps with an async generator `around`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext

Responses = Callable[[], AsyncIterator[Any]]


class CallInterceptor(grpc.aio.ServerInterceptor, ABC):
    @abstractmethod
    def around(
        self,
        details: grpc.HandlerCallDetails,
        context: ServicerContext[Any, Any],
        responses: Responses,
    ) -> AsyncIterator[Any]:
        """An async generator that iterates `responses()` and yields what it yields."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await self.handler_for(continuation, handler_call_details)
        if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED
            return handler
        return _wrap(handler, self, handler_call_details)

    async def handler_for(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return await continuation(details)


def _wrap(
    handler: grpc.RpcMethodHandler,
    interceptor: CallInterceptor,
    details: grpc.HandlerCallDetails,
) -> grpc.RpcMethodHandler:
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )

    def responses_of(request: Any, context: ServicerContext[Any, Any]) -> Responses:
        async def responses() -> AsyncIterator[Any]:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
                return
            value = await result
            # A streaming handler written with context.write() returns None: nothing to yield.
            if not handler.response_streaming:
                yield value

        return responses

    if handler.response_streaming:

        async def streaming(request: Any, context: ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for response in interceptor.around(
                details, context, responses_of(request, context)
            ):
                yield response

        new_behavior: Callable[..., Any] = streaming
        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
    else:

        async def unary(request: Any, context: ServicerContext[Any, Any]) -> Any:
            result = None
            async for response in interceptor.around(
                details, context, responses_of(request, context)
            ):
                result = response
            return result

        new_behavior = unary
        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    return factory(
        new_behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None

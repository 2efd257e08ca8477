"""The auth interceptor: the innermost one, so a refusal gets its request ID, its status
mapping and its usage row from the interceptors outside it, and the servicer never runs.

grpc.aio hands interceptors the handler, not the request; the model a call names is in
its request, so the handler's behaviour is wrapped to check the decoded request first.
Health is always open; reflection too when `auth.open_reflection` is set.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext

from genserve.contract import SPECS, Modality
from genserve.server.auth.caller import caller_var
from genserve.server.auth.guard import AUTHORIZATION, Guard, describe
from genserve.server.interceptors.base import metadata_value
from genserve.server.servicers.request import requested_model
from genserve.v1 import jobs_pb2, models_pb2

logger = logging.getLogger(__name__)

HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection."
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
MODALITY_BY_SERVICE = {f"/{spec.service}/": Modality(spec.name) for spec in SPECS}
JOB_SUBMIT = f"/{jobs_pb2.DESCRIPTOR.services_by_name['JobService'].full_name}/Submit"

Check = Callable[[Any, ServicerContext[Any, Any]], Awaitable[None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guard: Guard, open_reflection: bool, log_prompts: bool) -> None:
        self._guard = guard
        self._open = (HEALTH, REFLECTION) if open_reflection else (HEALTH,)
        self._log_prompts = log_prompts

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        guarded = self._guard.enabled and not method.startswith(self._open)
        if not guarded and not self._log_prompts:
            return handler
        authorization = metadata_value(details, AUTHORIZATION)

        async def check(request: Any, context: ServicerContext[Any, Any]) -> None:
            if self._log_prompts and request is not None:
                logger.info("request %s: %s", method, describe(request))
            if not guarded:
                return
            caller = await self._guard.identify(
                context.peer(), authorization, context.auth_context()
            )
            self._guard.record(caller)
            modality, model = _target(method, request)
            self._guard.authorize(caller, modality, model)
            caller_var.set(caller)

        return _checked(handler, check)


def _target(method: str, request: Any) -> tuple[Modality | None, str | None]:
    """What a call would use: a modality and the model it names (None: the default), or
    for ModelService's Load/Unload, only the model's name."""
    for prefix, modality in MODALITY_BY_SERVICE.items():
        if method.startswith(prefix):
            return modality, requested_model(request) if request is not None else None
    if method == JOB_SUBMIT and request is not None:  # the modality request it carries
        kind = request.WhichOneof("request")
        if kind is not None:
            return Modality(kind), requested_model(getattr(request, kind))
    if method.startswith(f"/{MODEL_SERVICE}/") and request is not None:
        return None, getattr(request, "name", None) or None
    return None, None


def _checked(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """The same handler, running `check` (with the request, when there is one) first."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def uu(request: Any, context: ServicerContext[Any, Any]) -> Any:
            await check(request, context)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, **serializers)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def su(requests: Any, context: ServicerContext[Any, Any]) -> Any:
            await check(None, context)
            return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(su, **serializers)
    streaming = handler.unary_stream or handler.stream_stream
    request_streaming = handler.unary_stream is None

    async def streamed(request: Any, context: ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(None if request_streaming else request, context)
        result = streaming(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:  # a handler written with context.write()
            await result

    factory = (
        grpc.stream_stream_rpc_method_handler
        if request_streaming
        else grpc.unary_stream_rpc_method_handler
    )
    return factory(streamed, **serializers)

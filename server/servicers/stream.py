"""The one streaming servicer for every modality but text: media files and transcripts.

Validates the request (request.py), streams the engine's plain events back as the
spec's protobuf events, and records the final event's timings on the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message
from grpc.aio import ServicerContext

from genserve.contract import ModalitySpec
from genserve.contract.events import Timings, media_event_to_pb
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.servicers.request import RequestConverter, admit_request, learn_speed
from genserve.server.settings import Settings


class StreamServicer:
    def __init__(
        self, spec: ModalitySpec[Any, Any], registry: ModelRegistry, settings: Settings
    ) -> None:
        self._spec = spec
        self._registry = registry
        self._convert = RequestConverter(spec, registry, settings)
        self._to_pb = spec.event_to_pb or media_event_to_pb

    async def Generate(
        self, request: Message, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        entry, defaults = self._convert.resolve(request)
        params = await self._convert.params(request, defaults)
        cost = admit_request(self._spec, entry, params, context)
        call = current_call_details()
        call.model = entry.name
        async with self._registry.use(entry.modality, entry.name) as engine:
            async for event in engine.generate(params):
                timings = getattr(event, "timings", None)
                if isinstance(timings, Timings):  # the final event
                    call.queued_ms = timings.queued_ms
                    call.inference_ms = timings.inference_ms
                    call.encoding_ms = timings.encoding_ms
                    learn_speed(entry, cost, timings.inference_ms)
                yield self._to_pb(event)

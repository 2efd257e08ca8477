"""The one media servicer: every media modality's Generate, by its row in the table.

Resolves the model by name (NOT_FOUND for an unknown one), converts the request with
the modality's converter and that model's defaults, streams the engine's plain events
back as genserve.v1.MediaEvent messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext
from pydantic import BaseModel

from genserve.server.admission import Cost, admit
from genserve.server.auth.caller import charge_caller
from genserve.server.media.events import Chunk, Final, Header, MediaEvent, Progress
from genserve.server.modalities import ModalityRow
from genserve.server.registry import ModelEntry, ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.settings import Settings
from genserve.v1 import common_pb2


def requested_model(request: Any) -> str | None:
    """The request's `model` field; None (the modality's default) when unset or empty."""
    return request.model or None if request.HasField("model") else None


class ModelDefaults:
    """Each model's request defaults, validated once (a bad manifest fails at start)."""

    def __init__(self, row: ModalityRow, registry: ModelRegistry) -> None:
        self._row = row
        self._registry = registry
        self._by_name = {
            entry.name: row.defaults_for(entry.spec) for entry in registry.entries(row.modality)
        }

    def resolve(self, request: Any) -> tuple[ModelEntry, BaseModel]:
        """The model a request names (checked to exist) and its defaults."""
        entry = self._registry.resolve(self._row.modality, requested_model(request))
        return entry, self._by_name[entry.name]


def admit_request(
    row: ModalityRow, entry: ModelEntry, params: Any, context: ServicerContext[Any, Any]
) -> Cost | None:
    """Prices the request and refuses it when it is over the model's caps or would not
    finish in the time it has (see admission.py)."""
    if row.cost_of is None:
        return None
    cost = row.cost_of(params)
    admit(entry.name, cost, entry.spec.limits, entry.speed, context.time_remaining())
    charge_caller(row.modality, cost)  # the caller's key budget, in the same units
    return cost


def learn_speed(entry: ModelEntry, cost: Cost | None, inference_ms: float) -> None:
    if cost is not None:
        entry.speed.observe(cost.units, inference_ms / 1000)


class MediaServicer:
    def __init__(self, row: ModalityRow, registry: ModelRegistry, settings: Settings) -> None:
        assert row.converter is not None, f"{row.modality} has no converter"
        self._row = row
        self._convert = row.converter
        self._registry = registry
        self._settings = settings
        self._defaults = ModelDefaults(row, registry)

    async def Generate(
        self, request: Any, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.MediaEvent]:
        entry, defaults = self._defaults.resolve(request)
        params = self._convert(request, defaults, self._settings)
        cost = admit_request(self._row, entry, params, context)
        call = current_call_details()
        call.model = entry.name
        async with self._registry.use(self._row.modality, entry.name) as engine:
            async for event in engine.generate(params):
                if isinstance(event, Final):
                    call.queued_ms = event.queued_ms
                    call.inference_ms = event.inference_ms
                    call.encoding_ms = event.encoding_ms
                    learn_speed(entry, cost, event.inference_ms)
                yield media_event_to_pb(event)


def media_event_to_pb(event: MediaEvent) -> common_pb2.MediaEvent:
    if isinstance(event, Chunk):
        return common_pb2.MediaEvent(
            chunk=common_pb2.DataChunk(data=event.data, offset=event.offset)
        )
    if isinstance(event, Progress):
        return common_pb2.MediaEvent(
            progress=common_pb2.Progress(
                step=event.step, total_steps=event.total_steps, stage=event.stage
            )
        )
    if isinstance(event, Header):
        return common_pb2.MediaEvent(
            header=common_pb2.MediaHeader(
                mime_type=event.mime_type,
                file_name=event.file_name,
                width=event.width,
                height=event.height,
                sample_rate=event.sample_rate,
                duration_s=event.duration_s,
                num_frames=event.num_frames,
                fps=event.fps,
                vertex_count=event.vertex_count,
                face_count=event.face_count,
            )
        )
    return common_pb2.MediaEvent(
        final=common_pb2.MediaFinal(
            total_bytes=event.total_bytes,
            sha256=event.sha256,
            timings=common_pb2.Timings(
                queued_ms=event.queued_ms,
                inference_ms=event.inference_ms,
                encoding_ms=event.encoding_ms,
                replica=event.replica,
            ),
            seed=event.seed,
            vertex_count=event.vertex_count,
            face_count=event.face_count,
        )
    )

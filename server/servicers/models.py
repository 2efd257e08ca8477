"""ModelService: the models the registry holds, by name; loading and unloading them."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from grpc.aio import ServicerContext

from genserve.contract import SPECS, spec_for
from genserve.server.errors import InvalidArgument
from genserve.server.modalities import engine_kind, limits_of
from genserve.server.ray_serve.placement import Replicated
from genserve.server.registry import ModelEntry, ModelRegistry
from genserve.server.settings import Settings
from genserve.v1 import models_pb2, models_pb2_grpc


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._registry = registry
        self._limits = struct_pb2.Struct()
        self._limits.update(
            {spec.name: limits_of(spec, settings).model_dump(mode="json") for spec in SPECS}
        )

    async def ListModels(
        self,
        request: models_pb2.ListModelsRequest,
        context: ServicerContext[Any, Any],
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[model_info_to_pb(entry, self._registry) for entry in self._registry.entries()],
            limits=self._limits,
            memory_budget_bytes=self._registry.memory_budget_bytes,
        )

    async def LoadModel(
        self, request: models_pb2.LoadModelRequest, context: ServicerContext[Any, Any]
    ) -> models_pb2.ModelInfo:
        entry = await self._registry.load(_name(request))
        return model_info_to_pb(entry, self._registry)

    async def UnloadModel(
        self, request: models_pb2.UnloadModelRequest, context: ServicerContext[Any, Any]
    ) -> models_pb2.ModelInfo:
        entry = await self._registry.unload(_name(request))
        return model_info_to_pb(entry, self._registry)


def _name(request: Any) -> str:
    if not request.name:
        raise InvalidArgument("name", "must name a model (see ListModels)")
    return str(request.name)


def model_info_to_pb(entry: ModelEntry, registry: ModelRegistry) -> models_pb2.ModelInfo:
    spec = entry.spec
    stats = entry.engine.stats() if entry.engine is not None else None
    default = registry.default_entry(entry.modality)
    return models_pb2.ModelInfo(
        name=spec.name,
        modality=entry.modality.value,
        service=spec_for(entry.modality).service,
        source=spec.source,
        device=str(spec.resolved_device()),
        dtype=str(spec.resolved_dtype()).removeprefix("torch."),
        load_policy=spec.load_policy.value,
        state=entry.state.value,
        detail=entry.detail or str(getattr(entry.engine, "detail", "")),
        engine=engine_kind(entry.modality, spec),
        is_default=default is entry,
        memory_bytes=entry.resident_bytes,
        queued=stats.queued if stats else 0,
        in_flight=stats.in_flight if stats else 0,
        placement=spec.placement,
        replicas_running=(
            entry.engine.replicas_running if isinstance(entry.engine, Replicated) else 0
        ),
    )

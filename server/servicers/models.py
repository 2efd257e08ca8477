"""ModelService: what the registry holds, per modality."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from genserve.v1 import models_pb2, models_pb2_grpc
from genserve.server.registry import ModelRegistry, ModelSlot
from genserve.server.service_names import SERVICE_BY_MODALITY


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ListModels(
        self,
        request: models_pb2.ListModelsRequest,
        context: ServicerContext[Any, Any],
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[model_info_to_pb(slot) for slot in self._registry.slots()]
        )


def model_info_to_pb(slot: ModelSlot) -> models_pb2.ModelInfo:
    spec = slot.spec
    return models_pb2.ModelInfo(
        name=spec.name if spec else "",
        modality=slot.modality.value,
        service=SERVICE_BY_MODALITY[slot.modality],
        source=spec.source if spec else "",
        device=str(spec.resolved_device()) if spec else "",
        dtype=str(spec.resolved_dtype()).removeprefix("torch.") if spec else "",
        load_policy=spec.load_policy.value if spec else "",
        state=slot.state.value,
        detail=slot.detail,
    )

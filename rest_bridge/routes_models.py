"""The models the server knows, by name, and their life cycle: ModelService as JSON.

`GET /models` lists them with the limits the server enforces; `POST /models/{name}/load`
and `/unload` load or release one. An unknown name is a 404; a model that fails to load
is a 409 (FAILED_PRECONDITION: retrying will not help until an operator acts).
"""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from genserve.bridge.backend import BackendHolder, current_metadata
from genserve.bridge.errors import ERROR_SCHEMA, documented_errors
from genserve.bridge.settings import BridgeSettings
from genserve.contract import SPECS
from genserve.contract.limits import limits_from_struct
from genserve.v1 import models_pb2


class ModelInfo(BaseModel):
    name: str
    modality: str = Field(description=" | ".join(spec.name for spec in SPECS))
    service: str = Field(description="the gRPC service that serves it")
    source: str
    device: str
    dtype: str
    load_policy: str = Field(description="preload, lazy or on_demand")
    state: str = Field(
        description="loaded, unloaded, pending, loading, draining, on_demand or failed"
    )
    detail: str = Field(description="why it failed, when it did")
    engine: str
    is_default: bool = Field(description="serves the requests of its modality that name none")
    memory_bytes: int = Field(description="weights and buffers held now")
    queued: int = Field(description="requests waiting for it")
    in_flight: int = Field(description="requests running on it")
    placement: str = Field(description="local (the server's process) or ray (Serve replicas)")
    replicas_running: int = Field(description="placement ray: replicas running now")

    @classmethod
    def from_pb(cls, info: models_pb2.ModelInfo) -> "ModelInfo":
        return cls(**{name: getattr(info, name) for name in cls.model_fields})


class ServerModels(BaseModel):
    models: list[ModelInfo]
    limits: dict[str, dict[str, Any]] = Field(
        description="what the server enforces, per modality (this API's bounds come from it)"
    )
    memory_budget_bytes: int = Field(description="for the models together; 0: no budget")


def build_models_router(backend: BackendHolder, settings: BridgeSettings) -> APIRouter:
    router = APIRouter(prefix="/models", tags=["models"], responses=documented_errors(ERROR_SCHEMA))
    timeouts = settings.timeouts

    stubs = backend.stubs

    metadata = current_metadata

    @router.get("", response_model=ServerModels)
    async def list_models() -> ServerModels:
        """Every model by name: modality, engine, load policy, state, memory, queue; and
        the limits the server enforces."""
        reply = await stubs().models.ListModels(
            models_pb2.ListModelsRequest(), metadata=metadata(), timeout=timeouts.health
        )
        return ServerModels(
            models=[ModelInfo.from_pb(m) for m in reply.models],
            limits=limits_from_struct(reply.limits),
            memory_budget_bytes=reply.memory_budget_bytes,
        )

    @router.post("/{name}/load", response_model=ModelInfo)
    async def load_model(name: str) -> ModelInfo:
        """Loads the model now, whatever its load policy, and keeps it; answers once it is
        loaded (409 if it fails to)."""
        info = await stubs().models.LoadModel(
            models_pb2.LoadModelRequest(name=name), metadata=metadata(), timeout=timeouts.models
        )
        return ModelInfo.from_pb(info)

    @router.post("/{name}/unload", response_model=ModelInfo)
    async def unload_model(name: str) -> ModelInfo:
        """Refuses new requests for the model (409), lets those in flight finish, then
        releases it; `POST /models/{name}/load` brings it back."""
        info = await stubs().models.UnloadModel(
            models_pb2.UnloadModelRequest(name=name), metadata=metadata(), timeout=timeouts.models
        )
        return ModelInfo.from_pb(info)

    return router

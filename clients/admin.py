"""The server's own RPCs (health, ListModels, LoadModel, UnloadModel) as prepared calls:
built and read back here, sent by either transport."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from genserve.v1 import models_pb2

from .calls import Rpc
from .results import Catalog, ModelInfo, catalog, model_info

R = TypeVar("R")


def _model_rpc(method: str, reply_type: type[Message]) -> Rpc:
    service = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
    return Rpc(f"/{service.full_name}/{method}", reply_type)


HEALTH_CHECK = Rpc("/grpc.health.v1.Health/Check", health_pb2.HealthCheckResponse)
LIST_MODELS = _model_rpc("ListModels", models_pb2.ListModelsResponse)
LOAD_MODEL = _model_rpc("LoadModel", models_pb2.ModelInfo)
UNLOAD_MODEL = _model_rpc("UnloadModel", models_pb2.ModelInfo)


@dataclass(frozen=True)
class AdminCall(Generic[R]):
    rpc: Rpc
    request: Message
    timeout: float
    read: Callable[[Any], R]  # the reply, as the SDK returns it


def health(service: str, timeout: float) -> AdminCall[str]:
    request = health_pb2.HealthCheckRequest(service=service)
    return AdminCall(HEALTH_CHECK, request, timeout, _serving_status)


def list_models(timeout: float) -> AdminCall[Catalog]:
    return AdminCall(LIST_MODELS, models_pb2.ListModelsRequest(), timeout, catalog)


def load_model(name: str, timeout: float) -> AdminCall[ModelInfo]:
    return AdminCall(LOAD_MODEL, models_pb2.LoadModelRequest(name=name), timeout, model_info)


def unload_model(name: str, timeout: float) -> AdminCall[ModelInfo]:
    request = models_pb2.UnloadModelRequest(name=name)
    return AdminCall(UNLOAD_MODEL, request, timeout, model_info)


def _serving_status(reply: Any) -> str:
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name

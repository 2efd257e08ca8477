"""Liveness, readiness (the server's gRPC health, per modality) and Prometheus metrics."""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

import asyncio
from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from genserve.bridge.backend import Backend
from genserve.bridge.limits import ServerLimits
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.settings import BridgeSettings
from genserve.v1 import models_pb2

NO_MODEL = "NOT_SERVING (no model)"  # a modality of the server's with no model to serve


async def modality_statuses(backend: Backend, timeout: float) -> dict[str, str]:
    """Each modality the server has, and its service's health. The modalities and their
    services are the server's own table, read through ListModels; a modality without a
    model names no service there, and serves nothing."""
    try:
        reply = await backend.models.ListModels(
            models_pb2.ListModelsRequest(),
            metadata=backend.own_metadata(),  # an open route: the bridge's own key
            timeout=timeout,
        )
    except grpc.aio.AioRpcError as error:
        return dict.fromkeys(ServerLimits.model_fields, f"UNREACHABLE ({error.code().name})")
    services = {model.modality: model.service for model in reply.models}
    modalities = list(reply.limits.fields)  # every modality, with or without a model

    async def status_of(modality: str) -> str:
        service = services.get(modality)
        return await serving_status(backend, service, timeout) if service else NO_MODEL

    statuses = await asyncio.gather(*(status_of(m) for m in modalities))
    return dict(zip(modalities, statuses, strict=True))


async def serving_status(backend: Backend, service: str, timeout: float) -> str:
    try:
        reply = await backend.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        return f"UNREACHABLE ({error.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    server: str
    modalities: dict[str, str] = Field(
        description="per modality of the server's: its service's gRPC health status"
    )


def build_health_router(
    backend: Any, settings: BridgeSettings, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Liveness)
    async def healthz() -> Liveness:
        """The bridge process is up (it says nothing of the models)."""
        return Liveness(status="ok")

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> Response:
        """Ready when the gRPC server reports SERVING; each modality's status in the body."""
        current: Backend = backend.current
        timeout = settings.timeouts.health
        server, modalities = await asyncio.gather(
            serving_status(current, "", timeout), modality_statuses(current, timeout)
        )
        body = Readiness(ready=server == "SERVING", server=server, modalities=modalities)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint() -> Response:
        """The bridge's Prometheus metrics (the gRPC server exports its own)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router

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

from genserve.bridge.backend import Backend, BackendHolder
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.settings import BridgeSettings
from genserve.contract import SPECS, ModalitySpec
from genserve.v1 import models_pb2

NO_MODEL = "NOT_SERVING (no model)"  # a modality the server has no model for


async def modality_statuses(backend: Backend, timeout: float) -> dict[str, str]:
    """Each spec's service's health. A modality with no model on the server (ListModels
    lists none of it) serves nothing, whatever its service says."""
    names = [spec.name for spec in SPECS]
    try:
        reply = await backend.models.ListModels(
            models_pb2.ListModelsRequest(),
            metadata=backend.own_metadata(),  # an open route: the bridge's own key
            timeout=timeout,
        )
    except grpc.aio.AioRpcError as error:
        return dict.fromkeys(names, f"UNREACHABLE ({error.code().name})")
    modelled = {model.modality for model in reply.models}

    async def status_of(spec: ModalitySpec[Any, Any]) -> str:
        if spec.name not in modelled:
            return NO_MODEL
        return await serving_status(backend, spec.service, timeout)

    statuses = await asyncio.gather(*(status_of(spec) for spec in SPECS))
    return dict(zip(names, statuses, strict=True))


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
    modalities: dict[str, str] = Field(description="per modality: its service's gRPC health status")


def build_health_router(
    backend: BackendHolder, settings: BridgeSettings, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Liveness)
    async def healthz() -> Liveness:
        """The bridge process is up (it says nothing of the models)."""
        return Liveness(status="ok")

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> Response:
        """Ready when the gRPC server reports SERVING; each modality's status in the body."""
        current = backend.stubs()
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

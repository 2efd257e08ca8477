"""Liveness, readiness (the server's gRPC health, per modality) and Prometheus metrics."""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.settings import BridgeSettings

MODALITY_SERVICES = {
    "text": "genserve.v1.TextService",
    "audio": "genserve.v1.AudioService",
    "image": "genserve.v1.ImageService",
    "video": "genserve.v1.VideoService",
    "mesh": "genserve.v1.MeshService",
    "embedding": "genserve.v1.EmbeddingService",
}


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    server: str
    modalities: dict[str, str]


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
        statuses: dict[str, str] = {}
        for name, service in {"": "", **MODALITY_SERVICES}.items():
            try:
                reply = await backend.current.health.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=settings.timeouts.health,
                )
                statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                statuses[name] = f"UNREACHABLE ({error.code().name})"
        server = statuses.pop("")
        body = Readiness(ready=server == "SERVING", server=server, modalities=statuses)
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

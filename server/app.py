"""Assembles the gRPC server: servicers, interceptors, health, reflection, lifecycle.

Lifecycle: start() binds and reports NOT_SERVING; load_models() preloads and flips each
modality's health status; stop() reports NOT_SERVING, stops accepting calls and lets
in-flight streams drain for the grace period before cancelling them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genserve.v1 import (
    audio_pb2_grpc,
    embedding_pb2_grpc,
    image_pb2_grpc,
    mesh_pb2_grpc,
    models_pb2_grpc,
    text_pb2_grpc,
    video_pb2_grpc,
)
from genserve.server.interceptors import ErrorInterceptor, RequestIdInterceptor, TelemetryInterceptor
from genserve.server.interceptors.telemetry import log_access
from genserve.server.manifest import Manifest, Modality
from genserve.server.media.loaders import (
    load_audio_pipeline,
    load_embedding_model,
    load_image_pipeline,
    load_mesh_pipeline,
    load_video_pipeline,
)
from genserve.server.metrics import ServerMetrics
from genserve.server.registry import Loader, ModelRegistry
from genserve.server.service_names import MODEL_SERVICE, SERVICE_BY_MODALITY
from genserve.server.servicers.audio import AudioServicer
from genserve.server.servicers.embedding import EmbeddingServicer
from genserve.server.servicers.image import ImageServicer
from genserve.server.servicers.mesh import MeshServicer
from genserve.server.servicers.models import ModelServicer
from genserve.server.servicers.text import TextServicer
from genserve.server.servicers.video import VideoServicer
from genserve.server.settings import Settings
from genserve.server.text.loader import load_text_engine
from genserve.server.usage_log import UsageLog

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""  # the health service name that stands for the whole server

MiB = 1024 * 1024


def default_loaders(settings: Settings) -> dict[Modality, Loader]:
    return {
        Modality.TEXT: partial(load_text_engine, settings=settings),
        Modality.IMAGE: partial(load_image_pipeline, settings=settings),
        Modality.AUDIO: partial(load_audio_pipeline, settings=settings),
        Modality.VIDEO: partial(load_video_pipeline, settings=settings),
        Modality.MESH: partial(load_mesh_pipeline, settings=settings),
        Modality.EMBEDDING: partial(load_embedding_model, settings=settings),
    }


class GenServeServer:
    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        loaders: Mapping[Modality, Loader] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = ModelRegistry(
            manifest, loaders if loaders is not None else default_loaders(settings)
        )
        self.usage_log = UsageLog(settings.usage_db_path)
        self.metrics = ServerMetrics(self.registry)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        self._server = grpc.aio.server(
            interceptors=[
                RequestIdInterceptor(),
                TelemetryInterceptor(
                    [log_access, self.usage_log, self.metrics], self.metrics.track_in_flight
                ),
                ErrorInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_mb * MiB),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._add_servicers()

    def _add_servicers(self) -> None:
        server = self._server
        text_pb2_grpc.add_TextServiceServicer_to_server(
            TextServicer(self.registry, self.settings.text), server
        )
        registry, settings = self.registry, self.settings
        audio_pb2_grpc.add_AudioServiceServicer_to_server(AudioServicer(registry, settings), server)
        image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(registry, settings), server)
        video_pb2_grpc.add_VideoServiceServicer_to_server(VideoServicer(registry, settings), server)
        mesh_pb2_grpc.add_MeshServiceServicer_to_server(MeshServicer(registry, settings), server)
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(registry, settings.embedding), server
        )
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.registry), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.settings.reflection:
            names = [
                *SERVICE_BY_MODALITY.values(),
                MODEL_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ]
            reflection.enable_server_reflection(names, server)

    async def start(self) -> int:
        """Bind and start answering; every service reports NOT_SERVING until loaded."""
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self._server.add_insecure_port(address)
        for name in (OVERALL, *SERVICE_BY_MODALITY.values()):
            await self.health.set(name, NOT_SERVING)
        await self._server.start()
        logger.info("gRPC listening on %s:%d", self.settings.host, self.port)
        if self.settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)
            logger.info("metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)
        return self.port

    async def load_models(self) -> None:
        """Preload, then report each modality's health, then the server's."""
        await self.registry.preload()
        for slot in self.registry.slots():
            name = SERVICE_BY_MODALITY[slot.modality]
            if slot.ready:
                await self.health.set(name, SERVING)
            else:
                await self.health.set(name, NOT_SERVING)
                logger.warning("%s is NOT_SERVING: %s: %s", name, slot.state, slot.detail)
        await self.health.set(OVERALL, SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then stop accepting, then drain in-flight calls."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        logger.info("stopping: draining in-flight calls for up to %.1f s", grace)
        await self._server.stop(grace)
        self.registry.close()
        self.usage_log.close()
        self.metrics.close()
        logger.info("stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

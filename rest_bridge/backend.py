"""The bridge's one async gRPC channel and its stubs, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc

from genserve.bridge.upstream import caller_authorization, own_authorization
from genserve.server.request_context import REQUEST_ID_METADATA_KEY, current_request_id
from genserve.v1 import (
    audio_pb2_grpc,
    embedding_pb2_grpc,
    image_pb2_grpc,
    mesh_pb2_grpc,
    models_pb2_grpc,
    text_pb2_grpc,
    video_pb2_grpc,
)

MiB = 1024 * 1024


@dataclass
class Backend:
    channel: grpc.aio.Channel
    text: text_pb2_grpc.TextServiceStub
    audio: audio_pb2_grpc.AudioServiceStub
    image: image_pb2_grpc.ImageServiceStub
    video: video_pb2_grpc.VideoServiceStub
    mesh: mesh_pb2_grpc.MeshServiceStub
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    models: models_pb2_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub
    own_key: str | None = None  # the bridge's own API key, for its own calls

    @classmethod
    def connect(
        cls,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        own_key: str | None = None,
    ) -> Backend:
        options = [
            ("grpc.max_send_message_length", 32 * MiB),  # video requests carry an image
            ("grpc.max_receive_message_length", 32 * MiB),
        ]
        channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        return cls(
            channel=channel,
            text=text_pb2_grpc.TextServiceStub(channel),
            audio=audio_pb2_grpc.AudioServiceStub(channel),
            image=image_pb2_grpc.ImageServiceStub(channel),
            video=video_pb2_grpc.VideoServiceStub(channel),
            mesh=mesh_pb2_grpc.MeshServiceStub(channel),
            embedding=embedding_pb2_grpc.EmbeddingServiceStub(channel),
            models=models_pb2_grpc.ModelServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            own_key=own_key,
        )

    def own_metadata(self) -> tuple[tuple[str, str], ...]:
        """For the bridge's own calls (/readyz): its request ID and its own key."""
        return ((REQUEST_ID_METADATA_KEY, current_request_id()), *own_authorization(self.own_key))

    async def close(self) -> None:
        await self.channel.close()


def request_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """One ID joins the bridge's log, the server's log and the usage log; the caller's
    own key goes with it, for the server to check (see upstream.py)."""
    return ((REQUEST_ID_METADATA_KEY, request_id), *caller_authorization())


def current_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata of the HTTP request being served."""
    return request_metadata(current_request_id())


@dataclass
class BackendHolder:
    """The routers' handle on the channel, which exists only inside the lifespan."""

    current: Backend | None = None

    def stubs(self) -> Backend:
        assert self.current is not None, "the gRPC channel opens in the app's lifespan"
        return self.current

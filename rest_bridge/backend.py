"""The bridge's one async gRPC channel, opened in the app's lifespan, and a callable per
spec on it, built from the spec's RPC path and types (no per-modality stubs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from genserve.bridge.server_link import caller_authorization, own_authorization
from genserve.contract import SPECS, Interaction, ModalitySpec
from genserve.contract.metadata import REQUEST_ID
from genserve.server.request_context import current_request_id
from genserve.v1 import models_pb2_grpc

MiB = 1024 * 1024
RECEIVE_BYTES = 32 * MiB  # replies: media chunks are at most 2 MiB, embeddings small
UPLOAD_SLACK = MiB  # what a request carries besides its upload


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def largest_request(max_upload_bytes: int) -> int:
    """A request with the largest upload the server takes must fit in one message."""
    return max(max_upload_bytes + UPLOAD_SLACK, 4 * MiB)


@dataclass
class Backend:
    channel: grpc.aio.Channel
    models: models_pb2_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub
    own_key: str | None = None  # the bridge's own API key, for its own calls
    # spec name -> the channel's multicallable for its RPC (stream or unary, by interaction)
    calls: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(
        cls,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        own_key: str | None = None,
        max_send_bytes: int = 32 * MiB,
    ) -> Backend:
        options = [
            ("grpc.max_send_message_length", max_send_bytes),  # uploads: images, audio
            ("grpc.max_receive_message_length", RECEIVE_BYTES),
        ]
        channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        return cls(
            channel=channel,
            models=models_pb2_grpc.ModelServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            own_key=own_key,
            calls={spec.name: _multicallable(channel, spec) for spec in SPECS},
        )

    def call(self, spec: ModalitySpec[Any, Any]) -> Any:
        """The spec's RPC: call it with a request, `metadata=` and `timeout=`; a stream
        (text or media) answers with a call to read, a unary RPC with its reply."""
        return self.calls[spec.name]

    def own_metadata(self) -> tuple[tuple[str, str], ...]:
        """For the bridge's own calls (/readyz): its request ID and its own key."""
        return ((REQUEST_ID, current_request_id()), *own_authorization(self.own_key))

    async def close(self) -> None:
        await self.channel.close()


def _multicallable(channel: grpc.aio.Channel, spec: ModalitySpec[Any, Any]) -> Any:
    kind = channel.unary_unary if spec.interaction is Interaction.UNARY else channel.unary_stream
    return kind(
        spec.rpc_path,
        request_serializer=_serialize,
        response_deserializer=spec.event_type.FromString,
    )


def request_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """One ID joins the bridge's log, the server's log and the usage log; the caller's
    own key goes with it, for the server to check (see server_link.py)."""
    return ((REQUEST_ID, request_id), *caller_authorization())


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

"""The server's limits, read once from ListModels when the app is built, so that the
request schemas, and the OpenAPI document, state the bounds the server enforces.

The server publishes its settings sections as JSON (ModelService.ListModels `limits`);
they are read back with the same models, whose defaults are the server's. A server that
cannot be reached in time leaves those defaults, with a warning: the server checks every
request again, so a tighter server still wins.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, Field, ValidationError

from genserve.server.settings import (
    AudioLimits,
    EmbeddingLimits,
    ImageLimits,
    MediaLimits,
    MeshLimits,
    TextLimits,
    VideoLimits,
)
from genserve.v1 import models_pb2, models_pb2_grpc

logger = logging.getLogger(__name__)


# A media modality's limits carry what every media modality shares (chunk size, prompt
# length); its own fields come first, so audio's shorter prompt limit wins.
class ImageBounds(ImageLimits, MediaLimits):
    pass


class AudioBounds(AudioLimits, MediaLimits):
    pass


class VideoBounds(VideoLimits, MediaLimits):
    pass


class MeshBounds(MeshLimits, MediaLimits):
    pass


class ServerLimits(BaseModel):
    """Per modality, keyed as ListModels keys them."""

    text: TextLimits = Field(default_factory=TextLimits)
    image: ImageBounds = Field(default_factory=ImageBounds)
    audio: AudioBounds = Field(default_factory=AudioBounds)
    video: VideoBounds = Field(default_factory=VideoBounds)
    mesh: MeshBounds = Field(default_factory=MeshBounds)
    embedding: EmbeddingLimits = Field(default_factory=EmbeddingLimits)


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON, whole numbers as ints (a Struct holds every number as a double)."""
    converted: dict[str, Any] = _whole_numbers(MessageToDict(struct))
    return converted


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def limits_from_pb(limits: struct_pb2.Struct) -> ServerLimits:
    return ServerLimits.model_validate(struct_to_dict(limits))


def fetch_limits(
    target: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ServerLimits:
    """Blocking, for create_app: the routes (and their schemas) exist before the lifespan
    opens the async channel. Waits for the server to listen, up to `timeout` seconds."""
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        try:
            reply = stub.ListModels(
                models_pb2.ListModelsRequest(),
                wait_for_ready=True,
                timeout=timeout,
                metadata=metadata,
            )
            limits = limits_from_pb(reply.limits)
            logger.info("request bounds: the server's limits, read from %s", target)
            return limits
        except grpc.RpcError as error:
            reason = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
        except ValidationError as error:
            reason = f"unreadable limits: {error}"
    logger.warning(
        "could not read the server's limits from %s (%s); the API documents the server's "
        "default limits, and the server still enforces its own",
        target,
        reason,
    )
    return ServerLimits()

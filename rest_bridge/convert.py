"""HTTP request models to protobuf requests, and protobuf events to JSON-able dicts."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel

from genserve.v1 import (
    audio_pb2,
    image_pb2,
    mesh_pb2,
    text_pb2,
    video_pb2,
)

IMAGE_FORMATS = {
    "png": image_pb2.IMAGE_FORMAT_PNG,
    "jpeg": image_pb2.IMAGE_FORMAT_JPEG,
    "webp": image_pb2.IMAGE_FORMAT_WEBP,
}
MESH_FORMATS = {"obj": mesh_pb2.MESH_FORMAT_OBJ, "ply": mesh_pb2.MESH_FORMAT_PLY}
FINISH_REASONS = {
    text_pb2.FINISH_REASON_STOP: "stop",
    text_pb2.FINISH_REASON_LENGTH: "length",
    text_pb2.FINISH_REASON_CANCELLED: "cancelled",
}


def _set_fields(params: BaseModel, skip: set[str]) -> dict[str, Any]:
    """The fields the caller gave: unset optional fields stay unset in the proto, so the
    server applies its own (manifest) defaults."""
    return {k: v for k, v in params.model_dump().items() if k not in skip and v is not None}


def text_request(params: BaseModel) -> text_pb2.TextGenerateRequest:
    return text_pb2.TextGenerateRequest(**_set_fields(params, {"stream"}))


def image_request(params: BaseModel) -> image_pb2.ImageGenerateRequest:
    fields = _set_fields(params, {"format"})
    return image_pb2.ImageGenerateRequest(**fields, format=IMAGE_FORMATS[params.format])  # type: ignore[attr-defined]


def audio_request(params: BaseModel) -> audio_pb2.AudioGenerateRequest:
    return audio_pb2.AudioGenerateRequest(**_set_fields(params, set()))


def mesh_request(params: BaseModel) -> mesh_pb2.MeshGenerateRequest:
    fields = _set_fields(params, {"format"})
    return mesh_pb2.MeshGenerateRequest(**fields, format=MESH_FORMATS[params.format])  # type: ignore[attr-defined]


def video_request(params: BaseModel, image: bytes) -> video_pb2.VideoGenerateRequest:
    return video_pb2.VideoGenerateRequest(image=image, **_set_fields(params, set()))


def finish_reason(final: text_pb2.TextFinal) -> str:
    return FINISH_REASONS.get(final.finish_reason, "stop")


def event_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)

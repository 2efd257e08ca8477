"""Full gRPC service names, read from the generated descriptors."""

from __future__ import annotations

from genserve.v1 import (
    audio_pb2,
    embedding_pb2,
    image_pb2,
    mesh_pb2,
    models_pb2,
    text_pb2,
    video_pb2,
)
from genserve.server.manifest import Modality

SERVICE_BY_MODALITY: dict[Modality, str] = {
    Modality.TEXT: text_pb2.DESCRIPTOR.services_by_name["TextService"].full_name,
    Modality.AUDIO: audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name,
    Modality.IMAGE: image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    Modality.VIDEO: video_pb2.DESCRIPTOR.services_by_name["VideoService"].full_name,
    Modality.MESH: mesh_pb2.DESCRIPTOR.services_by_name["MeshService"].full_name,
    Modality.EMBEDDING: embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
}
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name

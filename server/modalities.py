"""The table of modalities: the one place that says what each modality is.

Per modality: its gRPC service (from the generated descriptor) and how to add a servicer,
the request type, the servicer kind (text, embedding or generic media with its
converter), the request defaults model, the settings section that bounds it (published
to the bridge through ListModels) and its engine kinds with their loaders. The server,
health, ListModels and the bridge loop over it; adding a modality is a row here, a
converter, an engine and its proto.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from genserve.server.admission import Cost
from genserve.server.engine.contract import Engine
from genserve.server.manifest import UPSTREAM_ENGINE, Modality, ModelSpec
from genserve.server.media.audio import AudioDefaults, AudioParams
from genserve.server.media.image import ImageDefaults, ImageParams
from genserve.server.media.mesh import MeshDefaults, MeshParams
from genserve.server.media.video import VideoDefaults, VideoParams
from genserve.server.servicers.audio import audio_params_from_pb
from genserve.server.servicers.image import image_params_from_pb
from genserve.server.servicers.mesh import mesh_params_from_pb
from genserve.server.servicers.video import video_params_from_pb
from genserve.server.settings import Settings
from genserve.server.text.defaults import TextDefaults
from genserve.server.text.types import TextRequest
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    mesh_pb2,
    mesh_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)

EngineLoader = Callable[[ModelSpec, Settings], Engine[Any, Any]]
Converter = Callable[[Any, Any, Settings], Any]
"""(proto request, the model's defaults, settings) -> plain params; InvalidArgument else."""


# Characters per token, to price a prompt before it is tokenized (English text, BPE).
CHARS_PER_TOKEN = 4


def _text_cost(request: TextRequest) -> Cost:
    prompt = sum(len(turn.content) for turn in request.messages) / CHARS_PER_TOKEN
    units = prompt + request.params.max_new_tokens
    return Cost(units, "prompt tokens + max_new_tokens", timed=False)


def _image_cost(p: ImageParams) -> Cost:
    pixels = p.width * p.height
    return Cost(pixels * p.num_inference_steps, "width x height x steps", pixels)


def _video_cost(p: VideoParams) -> Cost:
    pixels = p.width * p.height
    units = p.num_frames * pixels * p.num_inference_steps
    return Cost(units, "frames x width x height x steps", pixels)


def _mesh_cost(p: MeshParams) -> Cost:
    return Cost(p.num_inference_steps * p.grid_size**3, "steps x grid_size^3")


def _audio_cost(p: AudioParams) -> Cost:
    # Bark's tokens (and seconds of audio) grow with the text it speaks.
    return Cost(len(p.prompt), "prompt characters")


class NoDefaults(BaseModel):
    """For modalities whose requests have nothing to default."""


def _text_engine(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
    from genserve.server.text.loader import load_text_engine

    return load_text_engine(spec, settings, batching=True)


def _text_serial_engine(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
    from genserve.server.text.loader import load_text_engine

    return load_text_engine(spec, settings, batching=False)


def _text_llama_engine(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
    from genserve.server.text.loader import load_llama_text_engine

    return load_llama_text_engine(spec, settings)


def _upstream_loader(modality: Modality) -> EngineLoader:
    def load(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
        from genserve.server.upstream.loader import load_upstream_engine

        return load_upstream_engine(modality, spec, settings)

    return load


def _media_loader(name: str) -> EngineLoader:
    """Imported when a model loads: the table stays cheap to import."""

    def load(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
        from genserve.server.media import loaders

        loader: EngineLoader = getattr(loaders, name)
        return loader(spec, settings)

    return load


@dataclass(frozen=True)
class ModalityRow:
    modality: Modality
    proto_module: Any  # the generated *_pb2 module
    service_short_name: str  # e.g. "ImageService"
    request_type: type[Any]
    add_servicer: Callable[[Any, Any], None]  # add_<Service>Servicer_to_server
    servicer_kind: str  # "text", "embedding" or "media"
    defaults_type: type[BaseModel]
    limits_of: Callable[[Settings], BaseModel]  # what the server enforces, for the bridge
    engines: Mapping[str, EngineLoader]
    default_engine: str
    converter: Converter | None = None  # media only
    cost_of: Callable[[Any], Cost] | None = None  # prices a request for admission

    @property
    def service(self) -> str:
        """The full gRPC service name, as health and reflection know it."""
        name: str = self.proto_module.DESCRIPTOR.services_by_name[self.service_short_name].full_name
        return name

    def loader_for(self, spec: ModelSpec) -> EngineLoader | None:
        return self.engines.get(spec.engine or self.default_engine)

    def defaults_for(self, spec: ModelSpec | None) -> BaseModel:
        return self.defaults_type(**(spec.defaults if spec is not None else {}))

    def public_limits(self, settings: Settings) -> dict[str, Any]:
        limits = self.limits_of(settings).model_dump(mode="json")
        if self.servicer_kind == "media":  # what every media modality shares
            limits = settings.media.model_dump(mode="json") | limits
        return limits


MODALITIES: tuple[ModalityRow, ...] = (
    ModalityRow(
        modality=Modality.TEXT,
        proto_module=text_pb2,
        service_short_name="TextService",
        request_type=text_pb2.TextGenerateRequest,
        add_servicer=text_pb2_grpc.add_TextServiceServicer_to_server,
        servicer_kind="text",
        defaults_type=TextDefaults,
        limits_of=lambda s: s.text,
        engines={
            "llama.cpp": _text_llama_engine,
            "transformers": _text_engine,
            "transformers-serial": _text_serial_engine,
            UPSTREAM_ENGINE: _upstream_loader(Modality.TEXT),
        },
        default_engine="transformers",
        cost_of=_text_cost,
    ),
    ModalityRow(
        modality=Modality.AUDIO,
        proto_module=audio_pb2,
        service_short_name="AudioService",
        request_type=audio_pb2.AudioGenerateRequest,
        add_servicer=audio_pb2_grpc.add_AudioServiceServicer_to_server,
        servicer_kind="media",
        defaults_type=AudioDefaults,
        limits_of=lambda s: s.audio,
        engines={
            "bark": _media_loader("load_audio_engine"),
            UPSTREAM_ENGINE: _upstream_loader(Modality.AUDIO),
        },
        default_engine="bark",
        converter=audio_params_from_pb,
        cost_of=_audio_cost,
    ),
    ModalityRow(
        modality=Modality.IMAGE,
        proto_module=image_pb2,
        service_short_name="ImageService",
        request_type=image_pb2.ImageGenerateRequest,
        add_servicer=image_pb2_grpc.add_ImageServiceServicer_to_server,
        servicer_kind="media",
        defaults_type=ImageDefaults,
        limits_of=lambda s: s.image,
        engines={
            "diffusers": _media_loader("load_image_engine"),
            UPSTREAM_ENGINE: _upstream_loader(Modality.IMAGE),
        },
        default_engine="diffusers",
        converter=image_params_from_pb,
        cost_of=_image_cost,
    ),
    ModalityRow(
        modality=Modality.VIDEO,
        proto_module=video_pb2,
        service_short_name="VideoService",
        request_type=video_pb2.VideoGenerateRequest,
        add_servicer=video_pb2_grpc.add_VideoServiceServicer_to_server,
        servicer_kind="media",
        defaults_type=VideoDefaults,
        limits_of=lambda s: s.video,
        engines={"diffusers": _media_loader("load_video_engine")},
        default_engine="diffusers",
        converter=video_params_from_pb,
        cost_of=_video_cost,
    ),
    ModalityRow(
        modality=Modality.MESH,
        proto_module=mesh_pb2,
        service_short_name="MeshService",
        request_type=mesh_pb2.MeshGenerateRequest,
        add_servicer=mesh_pb2_grpc.add_MeshServiceServicer_to_server,
        servicer_kind="media",
        defaults_type=MeshDefaults,
        limits_of=lambda s: s.mesh,
        engines={"diffusers": _media_loader("load_mesh_engine")},
        default_engine="diffusers",
        converter=mesh_params_from_pb,
        cost_of=_mesh_cost,
    ),
    ModalityRow(
        modality=Modality.EMBEDDING,
        proto_module=embedding_pb2,
        service_short_name="EmbeddingService",
        request_type=embedding_pb2.EmbedRequest,
        add_servicer=embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
        servicer_kind="embedding",
        defaults_type=NoDefaults,
        limits_of=lambda s: s.embedding,
        engines={
            "sentence-transformers": _media_loader("load_embedding_engine"),
            UPSTREAM_ENGINE: _upstream_loader(Modality.EMBEDDING),
        },
        default_engine="sentence-transformers",
    ),
)

ROW_BY_MODALITY: dict[Modality, ModalityRow] = {row.modality: row for row in MODALITIES}
SERVICE_BY_MODALITY: dict[Modality, str] = {row.modality: row.service for row in MODALITIES}

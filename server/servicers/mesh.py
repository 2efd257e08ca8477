"""MeshService: text-to-3D with Shap-E, streamed as an OBJ or PLY file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from genserve.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from genserve.server.manifest import Modality
from genserve.server.media.mesh import MeshDefaults, MeshFormat, MeshParams, generate_mesh
from genserve.server.registry import ModelRegistry
from genserve.server.servicers.media import MediaStreamer, defaults_for
from genserve.server.servicers.validation import check_prompt, check_range, optional, seed_of
from genserve.server.settings import Settings

FORMATS = {
    mesh_pb2.MESH_FORMAT_UNSPECIFIED: MeshFormat.OBJ,
    mesh_pb2.MESH_FORMAT_OBJ: MeshFormat.OBJ,
    mesh_pb2.MESH_FORMAT_PLY: MeshFormat.PLY,
}


class MeshServicer(mesh_pb2_grpc.MeshServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._settings = settings
        self._defaults = defaults_for(registry, Modality.MESH, MeshDefaults)
        self._streamer = MediaStreamer(registry, Modality.MESH, settings.media.chunk_size)

    async def Generate(
        self, request: mesh_pb2.MeshGenerateRequest, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.MediaEvent]:
        params = mesh_params_from_pb(request, self._defaults, self._settings)
        async for event in self._streamer.stream(generate_mesh, params, params.seed):
            yield event


def mesh_params_from_pb(
    request: mesh_pb2.MeshGenerateRequest, defaults: MeshDefaults, settings: Settings
) -> MeshParams:
    limits = settings.mesh
    prompt = check_prompt("prompt", request.prompt, settings.media.max_prompt_chars)
    steps = check_range(
        "num_inference_steps",
        optional(request, "num_inference_steps", defaults.num_inference_steps),
        1,
        limits.max_steps,
    )
    guidance = check_range(
        "guidance_scale",
        float(optional(request, "guidance_scale", defaults.guidance_scale)),
        0.0,
        limits.max_guidance_scale,
    )
    if request.format not in FORMATS:
        check_range("format", int(request.format), 0, max(FORMATS))
    return MeshParams(
        prompt=prompt,
        guidance_scale=guidance,
        num_inference_steps=steps,
        grid_size=defaults.grid_size,
        seed=seed_of(request),
        format=FORMATS[request.format],
    )

"""MeshService requests: protobuf in, validated MeshParams out (Shap-E, OBJ or PLY)."""

from __future__ import annotations

from genserve.server.media.mesh import MeshDefaults, MeshFormat, MeshParams
from genserve.server.servicers.validation import check_prompt, check_range, optional, seed_of
from genserve.server.settings import Settings
from genserve.v1 import mesh_pb2

FORMATS = {
    mesh_pb2.MESH_FORMAT_UNSPECIFIED: MeshFormat.OBJ,
    mesh_pb2.MESH_FORMAT_OBJ: MeshFormat.OBJ,
    mesh_pb2.MESH_FORMAT_PLY: MeshFormat.PLY,
}


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

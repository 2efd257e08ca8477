"""Text-to-3D: a prompt in, an OBJ (vertex colours) or PLY mesh streamed out."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.limits import MeshBounds
from genserve.contract.spec import (
    SEED_BOUNDS,
    Cost,
    Interaction,
    ModalitySpec,
    finite,
    prompt_bounds,
)
from genserve.v1 import mesh_pb2


class MeshFormat(StrEnum):
    OBJ = "obj"
    PLY = "ply"


MIME_TYPES = {MeshFormat.OBJ: "model/obj", MeshFormat.PLY: "model/ply"}


class MeshParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    guidance_scale: float = 15.0  # chapter 3's defaults, what its readers expect
    num_inference_steps: int = 25
    seed: int = Field(0, description="unset: random, reported in the final event")
    format: MeshFormat = MeshFormat.OBJ
    # A model's setting (its manifest defaults), not a request field.
    grid_size: int = Field(128, description="marching-cubes resolution")
    include_prompt: bool = Field(
        False, description="the file's generation record holds the prompt (off: left out)"
    )


def mesh_bounds(limits: MeshBounds) -> dict[str, dict[str, Any]]:
    return {
        "prompt": prompt_bounds(limits.max_prompt_chars),
        "guidance_scale": finite(0, limits.max_guidance_scale),
        "num_inference_steps": {"ge": 1, "le": limits.max_steps},
        "seed": SEED_BOUNDS,
        "grid_size": {"ge": 8, "le": 256},
    }


def mesh_cost(params: MeshParams) -> Cost:
    return Cost(params.num_inference_steps * params.grid_size**3, "steps x grid_size^3")


MESH = ModalitySpec(
    name="mesh",
    aliases=("3d", "text-to-3d"),
    description="text-to-3D (Shap-E): an OBJ with vertex colours, or a PLY",
    proto_module=mesh_pb2,
    service_name="MeshService",
    method="Generate",
    request_type=mesh_pb2.MeshGenerateRequest,
    interaction=Interaction.MEDIA_STREAM,
    params_type=MeshParams,
    limits_type=MeshBounds,
    settings_sections=("media", "mesh"),
    bounds=mesh_bounds,
    cost=mesh_cost,
    mime_types=tuple(MIME_TYPES.values()),
    http_path="/generate/3d",
    sdk_timeout_s=600.0,
    engines={"diffusers": "genserve.server.media.loaders:load_mesh_engine"},
    default_engine="diffusers",
    attachment=True,
    example=lambda: {"prompt": "a chair", "num_inference_steps": 2},
)

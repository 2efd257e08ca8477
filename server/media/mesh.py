"""Text-to-3D with Shap-E, written with open3d as OBJ (vertex colours) or PLY."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import open3d
import torch
from pydantic import BaseModel, ConfigDict, Field

from server.media.events import Header
from server.media.run import MediaRun, diffusers_progress


class MeshFormat(StrEnum):
    OBJ = "obj"
    PLY = "ply"


MIME_TYPES = {MeshFormat.OBJ: "model/obj", MeshFormat.PLY: "model/ply"}


class MeshDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    guidance_scale: float = 15.0  # the seed's defaults
    num_inference_steps: int = Field(25, ge=1)
    grid_size: int = Field(128, ge=8, le=256, description="marching-cubes resolution")


@dataclass(frozen=True)
class MeshParams:
    prompt: str
    guidance_scale: float
    num_inference_steps: int
    grid_size: int
    seed: int
    format: MeshFormat


def generate_mesh(pipeline: Any, params: MeshParams, run: MediaRun) -> None:
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    with diffusers_progress(pipeline, run, "denoise"), torch.inference_mode():
        latents = pipeline(
            params.prompt,
            guidance_scale=params.guidance_scale,
            num_inference_steps=params.num_inference_steps,
            generator=generator,
            output_type="latent",
        ).images
        # Decoded here rather than by output_type="mesh" to choose the grid resolution.
        decoded = pipeline.shap_e_renderer.decode_to_mesh(
            latents[0][None], pipeline.device, grid_size=params.grid_size
        )
    run.inference_done()
    mesh = open3d.geometry.TriangleMesh()
    mesh.vertices = open3d.utility.Vector3dVector(
        decoded.verts.float().cpu().numpy().astype(np.float64)
    )
    mesh.triangles = open3d.utility.Vector3iVector(decoded.faces.cpu().numpy().astype(np.int32))
    colours = torch.stack([decoded.vertex_channels[c] for c in "RGB"], dim=1)
    mesh.vertex_colors = open3d.utility.Vector3dVector(
        colours.float().cpu().numpy().astype(np.float64)
    )
    run.header(
        Header(
            mime_type=MIME_TYPES[params.format],
            file_name=f"mesh-{params.seed}.{params.format.value}",
            vertex_count=len(mesh.vertices),
            face_count=len(mesh.triangles),
        )
    )
    # open3d writes only to a path: a private temporary folder, gone when we are done.
    with tempfile.TemporaryDirectory(prefix="genserve-mesh-") as folder:
        path = Path(folder) / f"mesh.{params.format.value}"
        if not open3d.io.write_triangle_mesh(path, mesh, write_vertex_colors=True):
            raise RuntimeError(f"open3d could not write the {params.format.value} file")
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                run.output.write(block)
    run.finish()

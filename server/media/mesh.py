"""Text-to-3D with Shap-E, written as OBJ (vertex colours) or PLY (see mesh_files)."""

from __future__ import annotations

from typing import Any

import torch

from genserve.contract.events import Header
from genserve.contract.modalities.mesh import MIME_TYPES, MeshFormat, MeshParams
from genserve.server.media.mesh_files import write_obj, write_ply
from genserve.server.media.run import MediaRun, diffusers_progress

WRITERS = {MeshFormat.OBJ: write_obj, MeshFormat.PLY: write_ply}


def generate_mesh(pipeline: Any, params: MeshParams, run: MediaRun) -> None:
    # The header goes first, before the denoising progress; the vertex and face counts
    # are known only after decoding, so they come in the final event.
    run.header(
        Header(
            mime_type=MIME_TYPES[params.format],
            file_name=f"mesh-{params.seed}.{params.format.value}",
        )
    )
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
    vertices = decoded.verts.float().cpu().numpy()
    faces = decoded.faces.cpu().numpy()
    colours = torch.stack([decoded.vertex_channels[c] for c in "RGB"], dim=1).float().cpu().numpy()
    WRITERS[params.format](run.output, vertices, colours, faces, run.record)
    run.finish(vertex_count=len(vertices), face_count=len(faces))

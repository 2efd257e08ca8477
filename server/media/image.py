"""Text-to-image with a diffusers Stable Diffusion pipeline."""

from __future__ import annotations

import io
from typing import Any

import torch

from genserve.contract.events import Header
from genserve.contract.modalities.image import EXTENSIONS, MIME_TYPES, ImageParams
from genserve.server.media.run import MediaRun, diffusers_progress


def generate_image(pipeline: Any, params: ImageParams, run: MediaRun) -> None:
    run.header(
        Header(
            mime_type=MIME_TYPES[params.format],
            file_name=f"image-{params.seed}.{EXTENSIONS[params.format]}",
            width=params.width,
            height=params.height,
        )
    )
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    with diffusers_progress(pipeline, run, "denoise"), torch.inference_mode():
        result = pipeline(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            width=params.width,
            height=params.height,
            generator=generator,
        )
    run.inference_done()
    encoded = io.BytesIO()
    result.images[0].save(encoded, format=params.format.value.upper())
    run.output.write_all(encoded.getbuffer())
    run.finish()

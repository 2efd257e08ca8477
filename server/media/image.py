"""Text-to-image with a diffusers Stable Diffusion pipeline."""

from __future__ import annotations

from typing import Any

import torch

from genserve.contract.events import Header
from genserve.contract.modalities.image import EXTENSIONS, MIME_TYPES, ImageParams
from genserve.server.media.run import MediaRun, diffusers_progress
from genserve.server.provenance.images import ImageFile


def start_image_file(params: ImageParams, run: MediaRun) -> ImageFile:
    """The file with its generation record; a PNG's head (with the record) leaves now."""
    file = ImageFile(params.format.value.upper(), params.width, params.height, run.record)
    run.send_now(file.head())
    return file


def generate_image(pipeline: Any, params: ImageParams, run: MediaRun) -> None:
    run.header(
        Header(
            mime_type=MIME_TYPES[params.format],
            file_name=f"image-{params.seed}.{EXTENSIONS[params.format]}",
            width=params.width,
            height=params.height,
        )
    )
    file = start_image_file(params, run)
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
    run.output.write_all(file.rest(result.images[0]))
    run.finish()

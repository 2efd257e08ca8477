"""Text-to-image with a diffusers Stable Diffusion pipeline."""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from genserve.server.media.events import Header
from genserve.server.media.run import MediaRun, diffusers_progress


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


MIME_TYPES = {
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
    ImageFormat.WEBP: "image/webp",
}
EXTENSIONS = {ImageFormat.PNG: "png", ImageFormat.JPEG: "jpg", ImageFormat.WEBP: "webp"}


class ImageDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_inference_steps: int = Field(10, ge=1)  # the seed's default
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512


@dataclass(frozen=True)
class ImageParams:
    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    format: ImageFormat


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

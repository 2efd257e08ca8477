"""Text-to-image: a prompt in, a PNG, JPEG or WebP file streamed out."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.limits import ImageBounds, PictureLimits
from genserve.contract.spec import (
    SEED_BOUNDS,
    Cost,
    Interaction,
    InvalidField,
    ModalitySpec,
    finite,
    prompt_bounds,
)
from genserve.v1 import image_pb2


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


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = Field(10, description="denoising steps")  # chapter 3's default
    guidance_scale: float = 7.5
    width: int = Field(512, description="a multiple of 8")
    height: int = Field(512, description="a multiple of 8")
    seed: int = Field(0, description="unset: random, reported in the final event")
    format: ImageFormat = ImageFormat.PNG
    include_prompt: bool = Field(
        False, description="the file's generation record holds the prompt (off: left out)"
    )


def side(limits: PictureLimits) -> dict[str, Any]:
    """A width or height: a multiple of 8 within the sides, the area within max_pixels."""
    return {
        "ge": limits.min_side,
        "le": limits.max_side,
        "multiple_of": 8,
        "description": f"a multiple of 8; width x height at most {limits.max_pixels} pixels",
    }


def image_bounds(limits: ImageBounds) -> dict[str, dict[str, Any]]:
    return {
        "prompt": prompt_bounds(limits.max_prompt_chars),
        "negative_prompt": {"max_length": limits.max_prompt_chars},
        "num_inference_steps": {"ge": 1, "le": limits.max_steps},
        "guidance_scale": finite(0, limits.max_guidance_scale),
        "width": side(limits),
        "height": side(limits),
        "seed": SEED_BOUNDS,
    }


def check_pixels(params: Any, limits: Any) -> None:
    pixels = params.width * params.height
    if pixels > limits.max_pixels:
        raise InvalidField(
            "width", f"width x height = {pixels} pixels exceeds the limit of {limits.max_pixels}"
        )


def image_cost(params: ImageParams) -> Cost:
    pixels = params.width * params.height
    return Cost(pixels * params.num_inference_steps, "width x height x steps", pixels)


IMAGE = ModalitySpec(
    name="image",
    aliases=("text-to-image",),
    description="text-to-image (Stable Diffusion): progress per denoising step, then the file",
    proto_module=image_pb2,
    service_name="ImageService",
    method="Generate",
    request_type=image_pb2.ImageGenerateRequest,
    interaction=Interaction.MEDIA_STREAM,
    params_type=ImageParams,
    limits_type=ImageBounds,
    settings_sections=("media", "image"),
    bounds=image_bounds,
    cost=image_cost,
    check=check_pixels,
    mime_types=tuple(MIME_TYPES.values()),
    http_path="/generate/image",
    sdk_timeout_s=600.0,
    engines={
        "diffusers": "genserve.server.media.loaders:load_image_engine",
        # concurrent requests of one shape share the UNet (opt-in until it is the default)
        "diffusers-batched": "genserve.server.media.loaders:load_batching_image_engine",
        "upstream": "genserve.server.upstream.loader:load_image_upstream",
    },
    default_engine="diffusers",
    example=lambda: {"prompt": "a red cube on a table", "width": 64, "height": 64},
)

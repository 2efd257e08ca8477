"""ImageService requests: protobuf in, validated ImageParams out."""

from __future__ import annotations

from genserve.server.media.image import ImageDefaults, ImageFormat, ImageParams
from genserve.server.servicers.validation import (
    check_prompt,
    check_range,
    check_size,
    optional,
    seed_of,
)
from genserve.server.settings import Settings
from genserve.v1 import image_pb2

FORMATS = {
    image_pb2.IMAGE_FORMAT_UNSPECIFIED: ImageFormat.PNG,
    image_pb2.IMAGE_FORMAT_PNG: ImageFormat.PNG,
    image_pb2.IMAGE_FORMAT_JPEG: ImageFormat.JPEG,
    image_pb2.IMAGE_FORMAT_WEBP: ImageFormat.WEBP,
}


def image_params_from_pb(
    request: image_pb2.ImageGenerateRequest, defaults: ImageDefaults, settings: Settings
) -> ImageParams:
    limits = settings.image
    prompt = check_prompt("prompt", request.prompt, settings.media.max_prompt_chars)
    if len(request.negative_prompt) > settings.media.max_prompt_chars:
        check_prompt("negative_prompt", request.negative_prompt, settings.media.max_prompt_chars)
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
    width = optional(request, "width", defaults.width)
    height = optional(request, "height", defaults.height)
    check_size(width, height, limits.min_side, limits.max_side, limits.max_pixels)
    if request.format not in FORMATS:
        check_range("format", int(request.format), 0, max(FORMATS))
    return ImageParams(
        prompt=prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        seed=seed_of(request),
        format=FORMATS[request.format],
    )

"""Image-to-video: an image in, a fragmented H.264 MP4 streamed out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract import samples
from genserve.contract.limits import VideoBounds
from genserve.contract.modalities.image import check_pixels, side
from genserve.contract.spec import SEED_BOUNDS, Cost, Interaction, ModalitySpec, Upload, finite
from genserve.v1 import video_pb2


class VideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: bytes = Field(description="the conditioning image: PNG, JPEG or WebP")
    num_frames: int = 25  # chapter 3's defaults, what its readers expect
    fps: float = 7.0
    decode_chunk_size: int = Field(8, description="frames the VAE decodes at once")
    motion_bucket_id: int = Field(127, description="more: more motion")
    noise_aug_strength: float = 0.02
    num_inference_steps: int = 25
    width: int = Field(1024, description="a multiple of 8")
    height: int = Field(576, description="a multiple of 8")
    seed: int = Field(0, description="unset: random, reported in the final event")


def video_bounds(limits: VideoBounds) -> dict[str, dict[str, Any]]:
    return {
        "image": {"min_length": 1, "max_length": limits.max_image_bytes},
        "num_frames": {"ge": 1, "le": limits.max_frames},
        "fps": finite(1, limits.max_fps),
        "decode_chunk_size": {"ge": 1, "le": limits.max_frames},
        "motion_bucket_id": {"ge": 0, "le": 1023},
        "noise_aug_strength": finite(0, 1),
        "num_inference_steps": {"ge": 1, "le": limits.max_steps},
        "width": side(limits),
        "height": side(limits),
        "seed": SEED_BOUNDS,
    }


def video_cost(params: VideoParams) -> Cost:
    pixels = params.width * params.height
    units = params.num_frames * pixels * params.num_inference_steps
    return Cost(units, "frames x width x height x steps", pixels)


VIDEO = ModalitySpec(
    name="video",
    aliases=("image-to-video",),
    description="image-to-video (Stable Video Diffusion): a fragmented H.264 MP4",
    proto_module=video_pb2,
    service_name="VideoService",
    method="Generate",
    request_type=video_pb2.VideoGenerateRequest,
    interaction=Interaction.MEDIA_STREAM,
    params_type=VideoParams,
    limits_type=VideoBounds,
    settings_sections=("media", "video"),
    bounds=video_bounds,
    cost=video_cost,
    check=check_pixels,
    mime_types=("video/mp4",),
    http_path="/generate/video",
    sdk_timeout_s=1800.0,
    engines={"diffusers": "genserve.server.media.loaders:load_video_engine"},
    default_engine="diffusers",
    upload=Upload("image", "PNG, JPEG or WebP", lambda limits: limits.max_image_bytes),
    server_hook="genserve.server.media.video_input:check_image",
    example=lambda: {
        "image": samples.png(),
        "num_frames": 2,
        "num_inference_steps": 1,
        "width": 64,
        "height": 64,
    },
)

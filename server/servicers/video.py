"""VideoService requests: protobuf in, validated VideoParams out (image decoded safely)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from genserve.server.errors import InvalidArgument
from genserve.server.media.video import VideoDefaults, VideoParams
from genserve.server.servicers.validation import check_range, check_size, optional, seed_of
from genserve.server.settings import Settings, VideoLimits
from genserve.v1 import video_pb2

ACCEPTED_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


def decode_image(data: bytes, limits: VideoLimits) -> Image.Image:
    """Pillow decode with the size checked from the header before any pixel is unpacked,
    so a decompression bomb costs nothing."""
    if not data:
        raise InvalidArgument("image", "must not be empty")
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(
            "image", f"{len(data)} bytes exceed the limit of {limits.max_image_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_IMAGE_FORMATS:
                raise InvalidArgument("image", f"must be PNG, JPEG or WebP, got {image.format}")
            pixels = image.width * image.height
            if pixels > limits.max_image_pixels:
                raise InvalidArgument(
                    "image",
                    f"{image.width}x{image.height} = {pixels} pixels exceed the limit of "
                    f"{limits.max_image_pixels}",
                )
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidArgument(
            "image", f"its pixels exceed the limit of {limits.max_image_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise InvalidArgument("image", "is not a readable PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidArgument("image", f"could not be decoded ({type(exc).__name__})") from None


def video_params_from_pb(
    request: video_pb2.VideoGenerateRequest, defaults: VideoDefaults, settings: Settings
) -> VideoParams:
    limits = settings.video
    num_frames = check_range(
        "num_frames", optional(request, "num_frames", defaults.num_frames), 1, limits.max_frames
    )
    fps = check_range("fps", float(optional(request, "fps", defaults.fps)), 1.0, limits.max_fps)
    decode_chunk_size = check_range(
        "decode_chunk_size",
        optional(request, "decode_chunk_size", defaults.decode_chunk_size),
        1,
        limits.max_frames,
    )
    motion_bucket_id = check_range(
        "motion_bucket_id",
        optional(request, "motion_bucket_id", defaults.motion_bucket_id),
        0,
        1023,
    )
    noise_aug_strength = check_range(
        "noise_aug_strength",
        float(optional(request, "noise_aug_strength", defaults.noise_aug_strength)),
        0.0,
        1.0,
    )
    steps = check_range(
        "num_inference_steps",
        optional(request, "num_inference_steps", defaults.num_inference_steps),
        1,
        limits.max_steps,
    )
    width = optional(request, "width", defaults.width)
    height = optional(request, "height", defaults.height)
    check_size(width, height, limits.min_side, limits.max_side, limits.max_pixels)
    image = decode_image(request.image, limits)  # last: the costliest check
    return VideoParams(
        image=image,
        num_frames=num_frames,
        fps=fps,
        decode_chunk_size=decode_chunk_size,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        num_inference_steps=steps,
        width=width,
        height=height,
        seed=seed_of(request, defaults.seed),
    )

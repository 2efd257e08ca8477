"""AudioService: text-to-audio with Bark, streamed as a WAV file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from genserve.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from genserve.server.errors import InvalidArgument
from genserve.server.manifest import Modality
from genserve.server.media.audio import AudioDefaults, AudioParams, generate_audio
from genserve.server.registry import ModelRegistry
from genserve.server.servicers.media import MediaStreamer, defaults_for
from genserve.server.servicers.validation import check_prompt, optional, seed_of
from genserve.server.settings import Settings


class AudioServicer(audio_pb2_grpc.AudioServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._settings = settings
        self._defaults = defaults_for(registry, Modality.AUDIO, AudioDefaults)
        self._streamer = MediaStreamer(registry, Modality.AUDIO, settings.media.chunk_size)

    async def Generate(
        self, request: audio_pb2.AudioGenerateRequest, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.MediaEvent]:
        params = audio_params_from_pb(request, self._defaults, self._settings)
        async for event in self._streamer.stream(generate_audio, params, params.seed):
            yield event


def audio_params_from_pb(
    request: audio_pb2.AudioGenerateRequest, defaults: AudioDefaults, settings: Settings
) -> AudioParams:
    prompt = check_prompt("prompt", request.prompt, settings.audio.max_prompt_chars)
    preset = optional(request, "preset", defaults.preset)
    allowed = settings.audio.voice_presets
    if preset not in allowed:
        raise InvalidArgument("preset", f"must be one of {', '.join(allowed)}, got {preset!r}")
    return AudioParams(prompt=prompt, preset=preset, seed=seed_of(request))
